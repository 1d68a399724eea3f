from transfergrid.forkserver import run_in_fork_server

# In a local run this job forks from the server that imported torch once, and ends here.
run_in_fork_server()

from pathlib import Path

from transfergrid.jobs import run_job
from transfergrid.weights import import_checkpoint


def main(smk, log):
    import_checkpoint(smk.wildcards.backbone, Path(smk.input.checkpoint), Path(smk.output.weights), log)


run_job(snakemake, main)
