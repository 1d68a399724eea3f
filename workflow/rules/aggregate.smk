# Gather every cell into one table: one row per cell, every grid coordinate a column.


localrules:
    aggregate,


rule aggregate:
    input:
        selections=cell_files("selection.json"),
        test=cell_files("test.json"),
        code=package_source("aggregate.py"),
    output:
        summary=report("results/summary.csv", caption="../report/summary.rst", category="Summary"),
    log:
        f"{LOGS}/aggregate.log",
    conda:
        "../../envs/report.yaml"
    params:
        cells=[cell.path for cell in CELLS],
    script:
        "../scripts/aggregate.py"
