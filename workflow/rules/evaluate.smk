# Evaluate a trained cell on the test split, exactly once.


rule evaluate_cell:
    input:
        model=f"{CELL_PATTERN}/model.pt",
        cache=image_cache_path,
        split="results/datasets/{dataset}/split.csv",
    output:
        metrics=f"{CELL_PATTERN}/test.json",
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
