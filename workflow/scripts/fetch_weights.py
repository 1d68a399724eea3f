from transfergrid.forkserver import run_in_fork_server

# In a local run this job forks from the server that imported torch once, and ends here.
run_in_fork_server()

from pathlib import Path

from transfergrid.jobs import run_job
from transfergrid.weights import materialise_weights


def main(smk, log):
    materialise_weights(smk.wildcards.backbone, smk.wildcards.weights, Path(smk.output.weights), log)


run_job(snakemake, main)
