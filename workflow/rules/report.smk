# Render the self-contained HTML report. Its code is an input, so editing the report re-renders
# the report and nothing else.


localrules:
    report,


rule report:
    input:
        summary="results/summary.csv",
        confusions=cell_files("confusion.csv"),
        code=[package_source("report.py"), package_source("plots.py")],
    output:
        html=report("results/report/index.html", caption="../report/index.rst", category="Report"),
    log:
        f"{LOGS}/report.log",
    conda:
        "../../envs/report.yaml"
    params:
        facet_by=config["report"]["facet_by"],
        max_curves=config["report"]["max_curves"],
    script:
        "../scripts/report.py"
