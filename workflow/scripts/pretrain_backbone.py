from pathlib import Path

from transfergrid.jobs import run_job
from transfergrid.pretrain import pretrain_backbone
from transfergrid.settings import PretrainJob


def main(smk, log):
    pretrain_backbone(
        PretrainJob.from_dict(smk.params.job),
        Path(smk.input.cache),
        Path(smk.input.split),
        Path(smk.input.classes),
        Path(smk.output.weights),
        smk.threads,
        log,
        checkpoint_path=Path(smk.params.checkpoint),
    )


run_job(snakemake, main)
