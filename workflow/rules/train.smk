# Train one cell of the grid; the best epoch is chosen on the validation split.


rule train_cell:
    input:
        cache=image_cache_path,
        features=cell_features,
        split="results/datasets/{dataset}/split.csv",
        classes="results/datasets/{dataset}/classes.json",
        weights=weights_file,
    output:
        model=f"{CELL_PATTERN}/model.pt",
        history=f"{CELL_PATTERN}/history.csv",
        summary=f"{CELL_PATTERN}/train.json",
        cell=f"{CELL_PATTERN}/cell.json",
    log:
        f"{LOGS}/train_cell/{{dataset}}/{{fraction}}/{{backbone}}/{{weights}}/{{strategy}}/{{head}}/seed{{seed}}.log",
    conda:
        "../../envs/torch.yaml"
    threads: COMPUTE_THREADS
    resources:
        **COMPUTE_RESOURCES,
    params:
        cell=cell_params,
    script:
        "../scripts/train_cell.py"
