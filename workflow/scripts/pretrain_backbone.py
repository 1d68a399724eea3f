from transfergrid.forkserver import run_in_fork_server

# In a local run this job forks from the server that imported torch once, and ends here.
run_in_fork_server()

from pathlib import Path

from transfergrid.jobs import run_job
from transfergrid.naming import checkpoint_path
from transfergrid.pretrain import pretrain_backbone
from transfergrid.settings import PretrainJob


def main(smk, log):
    pretrain_backbone(
        PretrainJob.from_dict(smk.params.job),
        Path(smk.input.cache),
        Path(smk.input.split),
        Path(smk.input.classes),
        Path(smk.output.weights),
        smk.threads,
        log,
        # Resumable state, written every epoch where Snakemake does not delete it (not an output).
        checkpoint_path=Path(checkpoint_path(f"pretrain/{smk.wildcards.backbone}/{smk.wildcards.name}")),
        code_version=smk.params.code,
    )


run_job(snakemake, main)
