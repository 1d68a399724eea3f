from transfergrid.forkserver import run_in_fork_server

# In a local run this job forks from the server that imported torch once, and ends here.
run_in_fork_server()

from pathlib import Path

from transfergrid.evaluate import evaluate_network_cell
from transfergrid.jobs import run_job


def main(smk, log):
    candidates = [Path(path).parent for path in smk.input.summaries]
    evaluate_network_cell(
        candidates, Path(smk.input.cache), Path(smk.input.split), Path(smk.output.metrics).parent, smk.threads, log
    )


run_job(snakemake, main)
