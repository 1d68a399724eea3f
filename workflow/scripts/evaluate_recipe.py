from transfergrid.forkserver import run_in_fork_server

# In a local run this job forks from the server that imported torch once, and ends here.
run_in_fork_server()

from pathlib import Path

from transfergrid.evaluate import evaluate_network_cells
from transfergrid.jobs import run_job


def main(smk, log):
    # Each input is <cell>/<candidate>/train.json, cells in seed order: each cell's results go to
    # its own directory, its candidates are the ones listed under it.
    cells: dict[Path, list[Path]] = {}
    for summary in map(Path, smk.input.summaries):
        cells.setdefault(summary.parent.parent, []).append(summary.parent)
    evaluate_network_cells(list(cells.items()), Path(smk.input.cache), Path(smk.input.split), smk.threads, log)


run_job(snakemake, main)
