# Evaluate every seed of a network recipe (the cells that differ only by seed) in one job: for each
# cell, choose its learning-rate candidate on validation and evaluate it on the test split, exactly
# once. One job per recipe rather than per cell: a third of the jobs with three seeds, so a third of
# the start-ups and of Snakemake's own planning per job. The evaluation code's version is a
# parameter: editing that code re-evaluates, never retrains.


rule evaluate_recipe:
    input:
        # Each candidate's train.json stands for its directory, all of it one training job's
        # outputs (model.pt, history.csv, train.json, cell.json): see cell_results().
        summaries=recipe_summaries,
        cache=image_cache_path,
        split="results/datasets/{dataset}/split.csv",
    output:
        recipe_outputs(),
    log:
        f"{LOGS}/evaluate_recipe/{{dataset}}/{{fraction}}/{{backbone}}/{{weights}}/{{strategy}}/{{head}}.log",
    wildcard_constraints:
        strategy=NETWORK_STRATEGY,
    conda:
        "../../envs/torch.yaml"
    threads: COMPUTE_THREADS
    resources:
        **COMPUTE_RESOURCES,
    params:
        code=code_version("evaluate.py", "metrics.py", "folding.py"),
    script:
        "../scripts/evaluate_recipe.py"
