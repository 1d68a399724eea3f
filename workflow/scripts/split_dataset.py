from transfergrid.io import read_manifest, write_csv
from transfergrid.jobs import run_job
from transfergrid.split import make_split


def main(smk, log):
    manifest = read_manifest(smk.input.manifest)
    table = make_split(manifest, smk.params.split["val"], smk.params.split["test"], smk.params.split["seed"])
    write_csv(table, smk.output.split)
    log(f"split sizes: {table.split.value_counts().to_dict()}")


run_job(snakemake, main)
