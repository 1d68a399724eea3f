from pathlib import Path

from transfergrid.jobs import run_job
from transfergrid.train import CellInputs, train_cell


def optional_path(files):
    return Path(files) if files else None


def main(smk, log):
    inputs = CellInputs(
        split=Path(smk.input.split),
        classes=Path(smk.input.classes),
        cache=optional_path(smk.input.cache),
        weights=optional_path(smk.input.weights),
        features=optional_path(smk.input.features),
    )
    train_cell(dict(smk.params.cell), inputs, Path(smk.output.model).parent, smk.threads, log)


run_job(snakemake, main)
