from pathlib import Path

from transfergrid.jobs import run_job
from transfergrid.report import render_report


def main(smk, log):
    render_report(Path(smk.input.summary), Path(smk.output.html), smk.params.facet_by, smk.params.max_curves)
    log(f"report -> {smk.output.html}")


run_job(snakemake, main)
