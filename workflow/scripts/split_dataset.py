from transfergrid.grid import dataset_fractions
from transfergrid.io import read_manifest, write_csv
from transfergrid.jobs import run_job
from transfergrid.split import make_split


def main(smk, log):
    manifest = read_manifest(smk.input.manifest)
    split, dataset = smk.params.split, smk.wildcards.dataset
    # A class too small for one of the training fractions is refused here, before any training. Read
    # from the config rather than a rule parameter: adding a fraction must not rewrite the split
    # (and rerun every cell downstream of it).
    fractions = dataset_fractions(smk.config, dataset)
    table = make_split(manifest, split["val"], split["test"], split["seed"], fractions, dataset)
    write_csv(table, smk.output.split)
    log(f"split sizes: {table.split.value_counts().to_dict()}")


run_job(snakemake, main)
