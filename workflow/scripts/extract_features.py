from transfergrid.forkserver import run_in_fork_server

# In a local run this job forks from the server that imported torch once, and ends here.
run_in_fork_server()

from pathlib import Path

from transfergrid.features import FeatureSource, build_feature_cache
from transfergrid.jobs import run_job


def main(smk, log):
    weights_file = Path(smk.input.weights) if smk.input.weights else None
    source = FeatureSource(smk.wildcards.backbone, smk.params.weights, weights_file, smk.params.init_seed)
    build_feature_cache(
        source,
        Path(smk.input.cache),
        Path(smk.output.features),
        batch_size=smk.params.batch_size,
        device=smk.params.device,
        threads=smk.threads,
        log=log,
        precision=smk.params.precision,
        channels_last=smk.params.channels_last,
    )


run_job(snakemake, main)
