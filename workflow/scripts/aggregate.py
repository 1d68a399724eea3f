from pathlib import Path

from transfergrid.aggregate import aggregate_cells
from transfergrid.jobs import run_job


def main(smk, log):
    summary = aggregate_cells([Path(p) for p in smk.params.cells], Path(smk.output.summary))
    log(f"{len(summary)} cells -> {smk.output.summary}")


run_job(snakemake, main)
