from pathlib import Path

from transfergrid.downloads import download
from transfergrid.jobs import run_job


def main(smk, log):
    download(smk.params.url, smk.params.sha256, Path(smk.output[0]), log=log)
    log(f"downloaded {smk.params.url} -> {smk.output[0]} (sha256 verified)")


run_job(snakemake, main)
