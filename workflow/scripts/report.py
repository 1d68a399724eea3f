from transfergrid.forkserver import run_in_fork_server

# In a local run this job forks from the server, if it is ready, and ends here. It needs no torch,
# so it does not wait for a server still importing it.
run_in_fork_server(wait_for_server=False)

from pathlib import Path

from transfergrid.jobs import run_job
from transfergrid.report import ReportSettings, render_report


def main(smk, log):
    settings = ReportSettings(
        facet_by=tuple(smk.params.facet_by),
        max_curves=smk.params.max_curves,
        thresholds=dict(smk.params.thresholds),
        processes=smk.threads,
    )
    render_report(
        Path(smk.input.summary),
        Path(smk.input.recipes),
        [Path(p) for p in smk.input.similarities],
        Path(smk.output.html),
        settings,
    )
    log(f"report -> {smk.output.html}")


run_job(snakemake, main)
