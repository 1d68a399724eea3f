from pathlib import Path

from transfergrid.jobs import run_job
from transfergrid.train import CellInputs, train_cell


def main(smk, log):
    inputs = CellInputs(Path(smk.input.cache), Path(smk.input.split), Path(smk.input.classes),
                        Path(smk.input.weights) if smk.input.weights else None)
    train_cell(dict(smk.params.cell), inputs, Path(smk.output.model).parent, smk.threads, log)


run_job(snakemake, main)
