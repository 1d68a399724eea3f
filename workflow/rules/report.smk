# Render the self-contained HTML report. Its code is an input, so editing the report re-renders
# the report and nothing else.


localrules:
    report,


rule report:
    input:
        summary="results/summary.csv",
        recipes="results/recipes.csv",
        similarities=similarity_files(),
        confusions=cell_files("confusion.csv"),
        predictions=cell_files("predictions.csv"),
        tests=cell_files("test.json"),
        caches=image_cache_files(),
        code=report_sources(),
    output:
        html=report("results/report/index.html", caption="../report/index.rst", category="Report"),
    log:
        f"{LOGS}/report.log",
    conda:
        "../../envs/report.yaml"
    params:
        facet_by=config["report"]["facet_by"],
        max_curves=config["report"]["max_curves"],
        thresholds=config["report"]["quadrant"],
    script:
        "../scripts/report.py"
