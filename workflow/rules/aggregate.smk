# Gather every cell into one table (one row per cell, every grid coordinate a column), and the
# recipes (cells that differ only by seed) into another, with their statistics over seeds.


localrules:
    aggregate,


rule aggregate:
    input:
        results=cell_results(),
    output:
        summary=report("results/summary.csv", caption="../report/summary.rst", category="Summary"),
        recipes=report("results/recipes.csv", caption="../report/recipes.rst", category="Summary"),
        leaderboard=report("results/leaderboard.md", caption="../report/leaderboard.rst", category="Summary"),
    log:
        f"{LOGS}/aggregate.log",
    conda:
        "../../envs/report.yaml"
    params:
        cells=[cell.path for cell in CELLS],
        code=code_version("aggregate.py", "recipes.py", "stats.py"),
    script:
        "../scripts/aggregate.py"
