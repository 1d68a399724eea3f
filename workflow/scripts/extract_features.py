from pathlib import Path

from transfergrid.features import build_feature_cache
from transfergrid.jobs import run_job


def main(smk, log):
    build_feature_cache(
        smk.wildcards.backbone,
        smk.params.weights,
        Path(smk.input.weights) if smk.input.weights else None,
        Path(smk.input.cache),
        Path(smk.output.features),
        smk.params.batch_size,
        smk.threads,
        smk.params.device,
        log,
        smk.params.init_seed,
    )


run_job(snakemake, main)
