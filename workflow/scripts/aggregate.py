from transfergrid.forkserver import run_in_fork_server

# In a local run this job forks from the server, if it is ready, and ends here. It needs no torch,
# so it does not wait for a server still importing it.
run_in_fork_server(wait_for_server=False)

from pathlib import Path

from transfergrid.aggregate import aggregate_cells
from transfergrid.jobs import run_job
from transfergrid.recipes import write_recipes


def main(smk, log):
    summary = aggregate_cells([Path(p) for p in smk.params.cells], Path(smk.output.summary))
    recipes = write_recipes(summary, Path(smk.output.recipes), Path(smk.output.leaderboard))
    log(f"{len(summary)} cells, {len(recipes)} recipes -> {smk.output.summary}, {smk.output.recipes}")


run_job(snakemake, main)
