from pathlib import Path

from transfergrid.imagecache import build_cache
from transfergrid.io import read_json
from transfergrid.jobs import run_job


def main(smk, log):
    channels = read_json(smk.input.classes)["channels"]
    info = build_cache(Path(smk.input.manifest), int(smk.wildcards.size), channels, Path(smk.output.cache), smk.threads)
    log(f"cached {info}")


run_job(snakemake, main)
