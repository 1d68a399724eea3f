"""The end of a failed run: which jobs failed and why, one line each, read from Snakemake's log and
each job's own log (``snakemake --keep-going`` runs every job it can and then lists them)."""

from __future__ import annotations

import re
from pathlib import Path

from .errors import one_line

_BLOCK = re.compile(r"^Error in (?:rule|group) (\S+?):\n(.*?)(?=^\S|\Z)", re.M | re.S)
_LOG = re.compile(r"^\s+log: (\S+)", re.M)
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
    stage is not always the rule's name (fit_frozen_pretrained_<dataset> logs in fit_frozen/, and
    SLURM reports a failed group by the group's name)."""
    parts = job_log.with_suffix("").parts
    below_stage = [i + 3 for i in range(len(parts) - 3) if parts[i : i + 2] == ("results", "logs")]
    return "/".join(parts[below_stage[-1] :]) if below_stage else job_log.with_suffix("").as_posix()


def failure_lines(snakemake_log: Path) -> list[str]:
    """One line per failed job of a run: rule, what it was working on, why, and its log."""
    text = Path(snakemake_log).read_text(errors="replace")
    lines = []
    for match in _BLOCK.finditer(text):
        rule, block = match.group(1), match.group(2)
        tail = text[match.end() : match.end() + 2000]
        logs = _LOG.findall(block)
        job_log = Path(logs[0]) if logs else None
        reason = job_reason(job_log) if job_log else None
        if reason is None:
            signal = _SIGNAL.search(block + tail)
            reason = f"killed by {signal.group(1)}" if signal else "see its log"
        target = worked_on(job_log) if job_log else ""
        lines.append(f"  {rule} {target}: {reason}" + (f" (log: {job_log})" if job_log else ""))
    return list(dict.fromkeys(lines))


def print_failures(snakemake_logs: str | Path | list) -> None:
    """Print the failure lines of Snakemake's log (``onerror`` hands over a list of log files)."""
    logs = snakemake_logs if isinstance(snakemake_logs, list | tuple) else [snakemake_logs]
    lines = [line for path in logs if Path(path).is_file() for line in failure_lines(Path(path))]
    if lines:
        print(f"transfergrid: {len(lines)} job(s) failed:", *lines, sep="\n", flush=True)
