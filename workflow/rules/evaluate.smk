# Choose a network cell's learning-rate candidate on validation and evaluate it on the test split,
# exactly once. The evaluation code is an input: editing it re-evaluates, never retrains.


rule evaluate_cell:
    input:
        # Each candidate's train.json stands for its directory, all of it one training job's
        # outputs (model.pt, history.csv, train.json, cell.json): see cell_results().
        summaries=lambda wildcards: candidate_files(wildcards, "train.json"),
        cache=image_cache_path,
        split="results/datasets/{dataset}/split.csv",
        code=[package_source(name) for name in ("evaluate.py", "metrics.py", "folding.py")],
    output:
        metrics=f"{CELL_PATTERN}/test.json",
        selection=f"{CELL_PATTERN}/selection.json",
        predictions=f"{CELL_PATTERN}/predictions.csv",
        confusion=f"{CELL_PATTERN}/confusion.csv",
    log:
        f"{LOGS}/evaluate_cell/{{dataset}}/{{fraction}}/{{backbone}}/{{weights}}/{{strategy}}/{{head}}/seed{{seed}}.log",
    conda:
        "../../envs/torch.yaml"
    threads: COMPUTE_THREADS
    resources:
        **COMPUTE_RESOURCES,
    script:
        "../scripts/evaluate_cell.py"
