from pathlib import Path

from transfergrid.jobs import run_job
from transfergrid.weights import import_checkpoint


def main(smk, log):
    import_checkpoint(smk.wildcards.backbone, Path(smk.input.checkpoint), Path(smk.output.weights), log)


run_job(snakemake, main)
