# Train one learning-rate candidate of a cell through the network (fine-tuning, scratch, frozen
# cells with augmentation); the best epoch is chosen on the validation split. Frozen cells that
# train on cached features are fitted by frozen.smk instead.


rule train_candidate:
    input:
        cache=image_cache_path,
        split="results/datasets/{dataset}/split.csv",
        classes="results/datasets/{dataset}/classes.json",
        weights=weights_file,
    output:
        model=f"{CANDIDATE_PATTERN}/model.pt",
        history=f"{CANDIDATE_PATTERN}/history.csv",
        summary=f"{CANDIDATE_PATTERN}/train.json",
        cell=f"{CANDIDATE_PATTERN}/cell.json",
    log:
        f"{LOGS}/train_candidate/{{dataset}}/{{fraction}}/{{backbone}}/{{weights}}/{{strategy}}/{{head}}/seed{{seed}}/lr{{lr}}.log",
    conda:
        "../../envs/torch.yaml"
    threads: COMPUTE_THREADS
    resources:
        **COMPUTE_RESOURCES,
    params:
        cell=candidate_params,
        # Resumable state, written every epoch where Snakemake does not delete it (not an output).
        checkpoint=lambda wildcards: checkpoint_path(cell_from(wildcards).candidate_path(wildcards.lr)),
    script:
        "../scripts/train_candidate.py"
