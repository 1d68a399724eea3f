from transfergrid.forkserver import run_in_fork_server

# In a local run this job forks from the server that imported torch once, and ends here.
run_in_fork_server()

from pathlib import Path

from transfergrid.cell import CellInputs, train_candidate
from transfergrid.jobs import run_job
from transfergrid.naming import checkpoint_path
from transfergrid.settings import CellSettings


def main(smk, log):
    out_dir = Path(smk.output.model).parent
    inputs = CellInputs(
        split=Path(smk.input.split),
        classes=Path(smk.input.classes),
        cache=Path(smk.input.cache),
        weights=Path(smk.input.weights) if smk.input.weights else None,
    )
    train_candidate(
        CellSettings.from_dict(smk.params.cell),
        inputs,
        out_dir,
        smk.threads,
        log,
        # Resumable state, written every epoch where Snakemake does not delete it (not an output).
        checkpoint_path=Path(checkpoint_path(out_dir)),
        code_version=smk.params.code,
    )


run_job(snakemake, main)
