from pathlib import Path

from transfergrid.jobs import run_job
from transfergrid.sources import build_dataset


def main(smk, log):
    archive = Path(smk.input.archive) if smk.input.archive else None
    info = build_dataset(smk.wildcards.dataset, dict(smk.params.spec), Path(smk.output.manifest).parent, archive, log)
    log(f"{info['num_images']} images in {len(info['classes'])} classes: {info['counts']}")


run_job(snakemake, main)
