from pathlib import Path

from transfergrid.cell import CellInputs, train_cell
from transfergrid.jobs import run_job
from transfergrid.settings import CellSettings


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
    train_cell(CellSettings.from_dict(smk.params.cell), inputs, Path(smk.output.model).parent, smk.threads, log)


run_job(snakemake, main)
