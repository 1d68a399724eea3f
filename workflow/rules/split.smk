# Seeded, stratified train/val/test split with per-class ranks for nested training fractions.


rule split_dataset:
    input:
        manifest="results/datasets/{dataset}/manifest.csv",
    output:
        split="results/datasets/{dataset}/split.csv",
    params:
        split=config["split"],
    log:
        f"{LOGS}/split_dataset/{{dataset}}.log",
    conda:
        "../../envs/data.yaml"
    script:
        "../scripts/split_dataset.py"
