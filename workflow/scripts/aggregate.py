from transfergrid.forkserver import run_in_fork_server

# In a local run this job forks from the server that imported torch once, and ends here.
run_in_fork_server()

from pathlib import Path

from transfergrid.aggregate import aggregate_cells
from transfergrid.jobs import run_job
from transfergrid.recipes import write_recipes


def main(smk, log):
    summary = aggregate_cells([Path(p) for p in smk.params.cells], Path(smk.output.summary))
    recipes = write_recipes(summary, Path(smk.output.recipes), Path(smk.output.leaderboard))
    log(f"{len(summary)} cells, {len(recipes)} recipes -> {smk.output.summary}, {smk.output.recipes}")


run_job(snakemake, main)
