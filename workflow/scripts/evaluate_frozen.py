from transfergrid.forkserver import run_in_fork_server

# In a local run this job forks from the server that imported torch once, and ends here.
run_in_fork_server()

from pathlib import Path

from transfergrid.evaluate import evaluate_frozen_group
from transfergrid.jobs import run_job


def main(smk, log):
    cells = [(Path(entry["cell_dir"]), [Path(c) for c in entry["candidates"]]) for entry in smk.params.cells]
    evaluate_frozen_group(cells, Path(smk.input.features), Path(smk.input.split), smk.threads, log)


run_job(snakemake, main)
