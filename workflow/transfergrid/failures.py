"""The end of a failed run: which jobs failed and why, one line each, read from Snakemake's log and
each job's own log (``snakemake --keep-going`` runs every job it can and then lists them)."""

from __future__ import annotations

import bisect
import re
from pathlib import Path

from .errors import one_line

# A failed job's report starts "Error in rule <rule>:" and runs to the next report's timestamp. A job
# of a failed cluster job group is reported indented under its group's report (Snakemake 9).
_JOB = re.compile(r"^(?P<indent>[ \t]*)Error in rule (?P<rule>\S+?):$", re.M)
_TIMESTAMP = re.compile(r"^[ \t]*\[\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}\]$", re.M)
# A failed job group's report: its name, and the cluster job's own log where there is one.
_GROUP = re.compile(r"^[ \t]+message: Error in group (?P<group>\S+)\n(?:[ \t]+log: (?P<logs>\S+?),? )?", re.M)
_LOG = re.compile(r"^\s+log: (\S+?),? ", re.M)
# What the executor said went wrong (a SLURM job's state, sbatch's refusal): its first line.
_MESSAGE = re.compile(r"^\s+message: (?P<message>.+?)(?:For further error details.*)?$", re.M)
_SIGNAL = re.compile(r"died with <Signals\.(\w+)")


def job_reason(job_log: Path) -> str | None:
    """What a job's log says went wrong: transfergrid's one-line error, else the last line of a
    traceback (the exception), else nothing."""
    if not job_log.is_file():
        return None
    lines = [line.strip() for line in job_log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    if errors:
        return errors[-1][len("error: ") :]
    if any(line.startswith("unexpected error in rule") for line in lines):
        return one_line(lines[-1])
    return None


def worked_on(job_log: Path) -> str:
    """What a job worked on: its log's path below results/logs/<stage>/, where every rule logs. The
    stage is not always the rule's name (fit_frozen_pretrained_<dataset> logs in fit_frozen/)."""
    parts = job_log.with_suffix("").parts
    below_stage = [i + 3 for i in range(len(parts) - 3) if parts[i : i + 2] == ("results", "logs")]
    return "/".join(parts[below_stage[-1] :]) if below_stage else job_log.with_suffix("").as_posix()


def group_reason(group: str, cluster_log: str | None) -> str:
    """Why a job of a failed job group that left no reason of its own failed. Without a cluster log
    the group never ran: its submission was refused (e.g. more CPUs than a node has), and Snakemake 9
    does not print sbatch's message for a group."""
    if cluster_log:
        return f"its job group {group} failed (see {cluster_log})"
    return (
        f"its job group {group} never ran: SLURM refused its submission (Snakemake does not show why for a "
        "group; --verbose prints the sbatch call to submit by hand)"
    )


def failure_lines(snakemake_log: Path) -> list[str]:
    """One line per failed job of a run: rule, what it was working on, why, and its log."""
    text = Path(snakemake_log).read_text(errors="replace")
    groups = list(_GROUP.finditer(text))
    group_starts = [group.start() for group in groups]
    jobs = list(_JOB.finditer(text))
    lines = []
    for index, match in enumerate(jobs):
        # The job's report, with what Snakemake printed after it (e.g. a killed command).
        next_job = jobs[index + 1].start() if index + 1 < len(jobs) else len(text)
        timestamp = _TIMESTAMP.search(text, match.end(), next_job)
        report = text[match.end() : timestamp.start() if timestamp else next_job]
        logs = _LOG.findall(report)
        job_log = Path(logs[0]) if logs else None
        # An indented report is a job of the last failed group reported before it.
        earlier = bisect.bisect_left(group_starts, match.start())
        group = groups[earlier - 1] if match.group("indent") and earlier else None
        message = _MESSAGE.search(report)
        said = message.group("message").strip() if message else "None"
        executor_message = None if said == "None" else said  # Snakemake writes None when the executor said nothing
        signal = _SIGNAL.search(report)
        reason = job_reason(job_log) if job_log else None
        if reason is None:
            if signal:
                reason = f"killed by {signal.group(1)}"
            elif executor_message:
                reason = executor_message
            elif group:
                reason = group_reason(group.group("group"), group.group("logs"))
            else:
                reason = "see its log"
        rule = match.group("rule")
        target = worked_on(job_log) if job_log else ""
        lines.append(f"  {rule} {target}: {reason}" + (f" (log: {job_log})" if job_log else ""))
    return list(dict.fromkeys(lines))


def print_failures(snakemake_logs: str | Path | list) -> None:
    """Print the failure lines of Snakemake's log (``onerror`` hands over a list of log files)."""
    logs = snakemake_logs if isinstance(snakemake_logs, list | tuple) else [snakemake_logs]
    lines = [line for path in logs if Path(path).is_file() for line in failure_lines(Path(path))]
    if lines:
        print(f"transfergrid: {len(lines)} job(s) failed:", *lines, sep="\n", flush=True)
