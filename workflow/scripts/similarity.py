from transfergrid.forkserver import run_in_fork_server

# In a local run this job forks from the server that imported torch once, and ends here.
run_in_fork_server()

from pathlib import Path

from transfergrid.features import measure_similarity
from transfergrid.jobs import run_job


def main(smk, log):
    measure_similarity(Path(smk.input.features), Path(smk.input.split), Path(smk.output.similarity), log)


run_job(snakemake, main)
