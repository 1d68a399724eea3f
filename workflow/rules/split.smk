# Seeded, stratified train/val/test split with per-class ranks for nested training fractions.


rule split_dataset:
    input:
        manifest="results/datasets/{dataset}/manifest.csv",
    output:
        split="results/datasets/{dataset}/split.csv",
    log:
        f"{LOGS}/split_dataset/{{dataset}}.log",
    # A second of work that every fit and similarity job waits for: not behind feature extraction.
    priority: 1
    # On a cluster, one job with obtaining the dataset and caching its images (see profiles/slurm).
    group:
        "prep"
    conda:
        "../../envs/data.yaml"
    params:
        split=config["split"],
        code=code_version("split.py"),
    script:
        "../scripts/split_dataset.py"
