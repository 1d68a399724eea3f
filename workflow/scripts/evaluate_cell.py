from pathlib import Path

from transfergrid.evaluate import evaluate_cell
from transfergrid.jobs import run_job


def main(smk, log):
    evaluate_cell(
        Path(smk.input.model),
        Path(smk.input.cache),
        Path(smk.input.split),
        Path(smk.output.metrics).parent,
        smk.threads,
        log,
    )


run_job(snakemake, main)
