from pathlib import Path

from transfergrid.jobs import run_job
from transfergrid.weights import pretrain_backbone


def main(smk, log):
    pretrain_backbone(
        dict(smk.params.job),
        Path(smk.input.cache),
        Path(smk.input.split),
        Path(smk.input.classes),
        Path(smk.output.weights),
        smk.threads,
        log,
    )


run_job(snakemake, main)
