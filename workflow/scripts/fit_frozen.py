from transfergrid.forkserver import run_in_fork_server

# In a local run this job forks from the server that imported torch once, and ends here.
run_in_fork_server()

from pathlib import Path

from transfergrid.frozen import FrozenCandidate, fit_frozen_group
from transfergrid.jobs import run_job
from transfergrid.settings import CellSettings


def main(smk, log):
    candidates = [
        FrozenCandidate(CellSettings.from_dict(entry["settings"]), Path(entry["out_dir"]), entry["weights_file"])
        for entry in smk.params.candidates
    ]
    results = fit_frozen_group(
        candidates, Path(smk.input.features), Path(smk.input.split), Path(smk.input.classes), smk.threads, log
    )
    log(f"{len(results)} candidates fitted")


run_job(snakemake, main)
