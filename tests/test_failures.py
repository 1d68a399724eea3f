"""The end of a failed run lists every failed job in one line: what it worked on, why, its log."""

import pytest
from test_workflow import copy_workflow, grid_config, snakemake, write_config

from transfergrid.failures import failure_lines

SNAKEMAKE_LOG = """\
[Sat Nov 28 01:27:56 2026]
Error in rule train_candidate:
    message: None
    jobid: 3
    output: results/cells/digits/1.0/resnet18/none/full/linear/seed0/lr1.0/model.pt
    log: {killed} (check log file(s) for error details)
RuleException:
CalledProcessError in file "workflow/rules/train.smk", line 29:
Command 'set -euo pipefail;  python train_candidate.py' died with <Signals.SIGKILL: 9>.
[Sat Nov 28 01:27:57 2026]
Error in rule evaluate_recipe:
    message: None
    jobid: 8
    log: {diverged} (check log file(s) for error details)
[Sat Nov 28 01:27:58 2026]
Error in rule extract_features:
    message: None
    jobid: 9
    log: {crashed} (check log file(s) for error details)
[Sat Nov 28 01:27:59 2026]
Error in rule fit_frozen_pretrained_digits:
    message: None
    jobid: 10
    log: {unfit} (check log file(s) for error details)
Exiting because a job execution failed. Look above for error messages
"""


def test_every_failed_job_gets_one_line_with_its_reason(tmp_path):
    logs = tmp_path / "results" / "logs"
    killed = logs / "train_candidate" / "digits/1.0/resnet18/none/full/linear/seed0/lr1.0.log"
    diverged = logs / "evaluate_recipe" / "digits/1.0/resnet18/none/full/linear.log"
    crashed = logs / "extract_features" / "digits_32px_resnet18_none_seed0.log"
    # The frozen rules are named per dataset but log in one stage folder.
    unfit = logs / "fit_frozen" / "digits_resnet18_imagenet.log"
    for path in (killed, diverged, crashed, unfit):
        path.parent.mkdir(parents=True, exist_ok=True)
    killed.write_text("epoch 1: phase 'train'\n")
    diverged.write_text("error: cell .../seed1: every learning-rate candidate diverged (lr1.0: ...)\n")
    crashed.write_text(
        "unexpected error in rule extract_features:\nTraceback (most recent call last):\n  ...\nOSError: disk full\n"
    )
    unfit.write_text("error: head 'svm': no class has two training images\n")
    log = tmp_path / "snakemake.log"
    log.write_text(SNAKEMAKE_LOG.format(killed=killed, diverged=diverged, crashed=crashed, unfit=unfit))
    lines = failure_lines(log)
    assert lines == [
        f"  train_candidate digits/1.0/resnet18/none/full/linear/seed0/lr1.0: killed by SIGKILL (log: {killed})",
        f"  evaluate_recipe digits/1.0/resnet18/none/full/linear: cell .../seed1: every learning-rate candidate "
        f"diverged (lr1.0: ...) (log: {diverged})",
        f"  extract_features digits_32px_resnet18_none_seed0: OSError: disk full (log: {crashed})",
        f"  fit_frozen_pretrained_digits digits_resnet18_imagenet: head 'svm': no class has two training images "
        f"(log: {unfit})",
    ]


# Snakemake 9's report of failed job groups (a cluster run): the group's block with the cluster job's
# log, then each of its jobs' blocks indented below it. A refused submission leaves no cluster log.
GROUP_LOG = """\
[Tue Dec  8 00:08:05 2026]
    message: Error in group cell
    log: {slurm_log} (check log file(s) for error details)
    jobs:
        rule evaluate_recipe:
            jobid: 5
            log: {evaluation} (check log file(s) for error details)
        rule train_candidate:
            jobid: 3
            log: {training} (check log file(s) for error details)
    [Tue Dec  8 00:08:05 2026]
    Error in rule evaluate_recipe:
        message: None
        jobid: 5
        log: {evaluation} (check log file(s) for error details)
    [Tue Dec  8 00:08:05 2026]
    Error in rule train_candidate:
        message: None
        jobid: 3
        log: {training} (check log file(s) for error details)
[Tue Dec  8 00:08:06 2026]
    message: Error in group prep
    jobs:
        rule obtain_dataset:
            jobid: 7
            log: {obtain} (check log file(s) for error details)
    [Tue Dec  8 00:08:06 2026]
    Error in rule obtain_dataset:
        message: None
        jobid: 7
        log: {obtain} (check log file(s) for error details)
Exiting because a job execution failed. Look above for error messages
"""


def test_the_jobs_of_a_failed_cluster_group_get_a_line_each(tmp_path):
    """A job's own error where its log has one; else its group's failure and the cluster job's log,
    or, without one, that the group's submission was refused."""
    logs = tmp_path / "results" / "logs"
    training = logs / "train_candidate" / "digits/1.0/resnet18/none/full/linear/seed2/lr1.0.log"
    evaluation = logs / "evaluate_recipe" / "digits/1.0/resnet18/none/full/linear.log"  # never started: no log
    obtain = logs / "obtain_dataset" / "fashion.log"
    training.parent.mkdir(parents=True)
    training.write_text("unexpected error in rule train_candidate:\nTraceback ...\nRuntimeError: made to fail\n")
    slurm_log = tmp_path / ".snakemake" / "slurm_logs" / "group_cell" / "17.log"
    log = tmp_path / "snakemake.log"
    log.write_text(GROUP_LOG.format(slurm_log=slurm_log, evaluation=evaluation, training=training, obtain=obtain))
    assert failure_lines(log) == [
        f"  evaluate_recipe digits/1.0/resnet18/none/full/linear: its job group cell failed (see {slurm_log}) "
        f"(log: {evaluation})",
        f"  train_candidate digits/1.0/resnet18/none/full/linear/seed2/lr1.0: RuntimeError: made to fail "
        f"(log: {training})",
        "  obtain_dataset fashion: its job group prep never ran: SLURM refused its submission (Snakemake does not "
        f"show why for a group; --verbose prints the sbatch call to submit by hand) (log: {obtain})",
    ]


# A job submitted alone: the SLURM plugin's message says what happened (Snakemake 9 prints it; its
# continuation lines and the plugin's closing sentence follow).
SLURM_JOB_LOG = """\
[Tue Dec  8 00:09:07 2026]
Error in rule train_candidate:
    message: SLURM-job '23' failed, SLURM status is: 'TIMEOUT'. Detailed failure reason unavailable \
(status command is not 'sacct').For further error details see the cluster/cloud log and the log files of the \
involved rule(s).
    jobid: 13
    log: {training}, {slurm_log} (check log file(s) for error details)
[Tue Dec  8 00:09:08 2026]
Error in rule similarity:
    message: SLURM sbatch failed. The error message was 'sbatch: error: invalid partition specified: gpu'.
    sbatch call:
        sbatch --parsable -p gpu --wrap="..."
For further error details see the cluster/cloud log and the log files of the involved rule(s).
    jobid: 12
    log: {similarity} (check log file(s) for error details)
"""


def test_a_cluster_jobs_line_gives_the_executors_reason(tmp_path):
    logs = tmp_path / "results" / "logs"
    training = logs / "train_candidate" / "digits/1.0/resnet18/none/full/linear/seed0/lr1.0.log"
    similarity = logs / "similarity" / "digits_efficientnet_lite0_imagenet_pkg.log"
    training.parent.mkdir(parents=True)
    training.write_text("epoch 1: phase 'train'\n")  # cut off by the time limit
    slurm_log = tmp_path / ".snakemake" / "slurm_logs" / "rule_train_candidate" / "23.log"
    log = tmp_path / "snakemake.log"
    log.write_text(SLURM_JOB_LOG.format(training=training, slurm_log=slurm_log, similarity=similarity))
    assert failure_lines(log) == [
        "  train_candidate digits/1.0/resnet18/none/full/linear/seed0/lr1.0: SLURM-job '23' failed, SLURM status is: "
        f"'TIMEOUT'. Detailed failure reason unavailable (status command is not 'sacct'). (log: {training})",
        "  similarity digits_efficientnet_lite0_imagenet_pkg: SLURM sbatch failed. The error message was 'sbatch: "
        f"error: invalid partition specified: gpu'. (log: {similarity})",
    ]


@pytest.mark.e2e
def test_keep_going_ends_with_one_line_per_failed_job(tmp_path):
    """A real run with --keep-going: a training that fails does not stop the other cells, and the
    run ends with one line naming the failed job, what it worked on, why, and its log."""
    config = grid_config({"digits": {"source": "builtin", "name": "digits", "max_per_class": 20}}, seeds=(0, 1))
    config["grid"]["strategies"] = ["full", "frozen"]
    copy_workflow(tmp_path)
    write_config(tmp_path, config)
    script = tmp_path / "workflow" / "scripts" / "train_candidate.py"
    script.write_text(
        script.read_text().replace(
            "def main(smk, log):\n",
            "def main(smk, log):\n    if '/seed1/' in smk.output.model:\n        raise RuntimeError('made to fail')\n",
        )
    )
    result = snakemake(tmp_path, "--keep-going", check=False)
    assert result.returncode != 0
    log = "results/logs/train_candidate/digits/1.0/resnet18/none/full/linear/seed1/lr1.0.log"
    summary = result.stdout[result.stdout.index("transfergrid: 1 job(s) failed:") :].splitlines()
    assert summary[1] == (
        f"  train_candidate digits/1.0/resnet18/none/full/linear/seed1/lr1.0: RuntimeError: made to fail (log: {log})"
    )
    # Every cell that does not need the failed training was finished.
    cells = tmp_path / "results" / "cells" / "digits" / "1.0" / "resnet18" / "none"
    assert (cells / "frozen" / "linear" / "seed0" / "test.json").exists()
    assert (cells / "frozen" / "linear" / "seed1" / "test.json").exists()
    assert (cells / "full" / "linear" / "seed0" / "lr1.0" / "model.pt").exists()
