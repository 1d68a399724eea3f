from transfergrid.io import read_manifest, write_csv
from transfergrid.jobs import run_job
from transfergrid.split import make_split


def main(smk, log):
    manifest = read_manifest(smk.input.manifest)
    split = smk.params.split
    # The grid's training fractions, so that a class too small for one is refused here, before training.
    fractions = getattr(smk.params, "fractions", None)
    table = make_split(manifest, split["val"], split["test"], split["seed"], fractions, smk.wildcards.dataset)
    write_csv(table, smk.output.split)
    log(f"split sizes: {table.split.value_counts().to_dict()}")


run_job(snakemake, main)
