"""The end of a failed run lists every failed job in one line: what it worked on, why, its log."""

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
Exiting because a job execution failed. Look above for error messages
"""


def test_every_failed_job_gets_one_line_with_its_reason(tmp_path):
    logs = tmp_path / "results" / "logs"
    killed = logs / "train_candidate" / "digits/1.0/resnet18/none/full/linear/seed0/lr1.0.log"
    diverged = logs / "evaluate_recipe" / "digits/1.0/resnet18/none/full/linear.log"
    crashed = logs / "extract_features" / "digits_32px_resnet18_none_seed0.log"
    for path in (killed, diverged, crashed):
        path.parent.mkdir(parents=True, exist_ok=True)
    killed.write_text("epoch 1: phase 'train'\n")
    diverged.write_text("error: cell .../seed1: every learning-rate candidate diverged (lr1.0: ...)\n")
    crashed.write_text(
        "unexpected error in rule extract_features:\nTraceback (most recent call last):\n  ...\nOSError: disk full\n"
    )
    log = tmp_path / "snakemake.log"
    log.write_text(SNAKEMAKE_LOG.format(killed=killed, diverged=diverged, crashed=crashed))
    lines = failure_lines(log)
    assert lines == [
        f"  train_candidate digits/1.0/resnet18/none/full/linear/seed0/lr1.0: killed by SIGKILL (log: {killed})",
        f"  evaluate_recipe digits/1.0/resnet18/none/full/linear: cell .../seed1: every learning-rate candidate "
        f"diverged (lr1.0: ...) (log: {diverged})",
        f"  extract_features digits_32px_resnet18_none_seed0: OSError: disk full (log: {crashed})",
    ]
