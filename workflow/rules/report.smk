# Render the self-contained HTML report. Its code version is a parameter, so editing the report
# re-renders the report and nothing else. It reads every cell's predictions and confusion matrix through
# results/summary.csv: the aggregation depends on every cell's results, so the summary is newer than
# any of them, and the report needs no input per cell (see cell_results() for why that matters).


localrules:
    report,


rule report:
    input:
        summary="results/summary.csv",
        recipes="results/recipes.csv",
        similarities=similarity_files(),
        caches=image_cache_files(),
    output:
        html=report("results/report/index.html", caption="../report/index.rst", category="Report"),
    log:
        f"{LOGS}/report.log",
    conda:
        "../../envs/report.yaml"
    # Figures are rendered this many at a time (forked processes, report/rendering.py). The report
    # is the last job, so it usually has the machine to itself; more processes than figure groups
    # would idle.
    threads: 4
    params:
        facet_by=config["report"]["facet_by"],
        max_curves=config["report"]["max_curves"],
        thresholds=config["report"]["quadrant"],
        code=report_code(),
    script:
        "../scripts/report.py"
