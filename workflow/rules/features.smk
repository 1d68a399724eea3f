# Backbone features of every image, extracted once per backbone x weights x dataset x size and
# shared by every head and seed of the frozen cells that train on them.


rule extract_features:
    input:
        cache="results/cache/{dataset}/{size}px.npy",
        weights=weights_file,
    output:
        features="results/features/{dataset}/{size}px/{backbone}/{weights}/{init}.pt",
    log:
        f"{LOGS}/extract_features/{{dataset}}_{{size}}px_{{backbone}}_{{weights}}_{{init}}.log",
    wildcard_constraints:
        init=r"pretrained|seed\d+",
    # A pretrained base's features first: every seed's frozen cells and the similarity job (one of
    # the longest jobs of a frozen grid, rules/similarity.smk) wait for them; a random base's only one seed's.
    priority: lambda wildcards: 1 if wildcards.init == "pretrained" else 0
    # On a cluster, one job with the frozen heads fitted and evaluated on these features (frozen.smk).
    group:
        "frozen"
    conda:
        "../../envs/torch.yaml"
    threads: COMPUTE_THREADS
    resources:
        **COMPUTE_RESOURCES,
    params:
        weights=weight_source,
        init_seed=lambda wildcards: int(wildcards.init[4:]) if wildcards.init.startswith("seed") else 0,
        device=config["train"]["device"],
        batch_size=config["train"]["batch_size"],
        precision=config["train"]["precision"],
        channels_last=config["train"]["channels_last"],
        # The extraction code, batch-norm folding included: editing it extracts again.
        code=code_version("features.py", "folding.py", "batches.py", "model.py", "runtime.py"),
    script:
        "../scripts/extract_features.py"
