"""Small file helpers: every output is written to a temporary name and renamed into place,
so a failed or killed job never leaves a half-written file that looks finished."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def process_is_running(pid: int) -> bool:
    """Whether process ``pid`` exists on this host and has not exited (an exited child that its
    parent has not reaped yet, a zombie, counts as gone)."""
    try:
        os.kill(pid, 0)  # signal 0 only asks whether the process exists
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True  # it exists, it is just another user's
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc to ask (not Linux): it exists
    return state not in ("Z", "X")


def _remove_stale_temporaries(final: Path) -> None:
    """Remove the temporaries of ``final`` that earlier attempts left: ``.{name}.tmp-<pid>`` whose
    process is gone (killed by SIGKILL, the OOM killer, a cluster's wall-time limit) or is this one.

    Only this host's processes can be asked, so on a shared filesystem a temporary whose pid runs
    here is kept until a later attempt; Snakemake never runs two jobs for one output at a time.
    """
    prefix = f".{final.name}.tmp-"
    for sibling in final.parent.iterdir():
        pid = sibling.name[len(prefix) :]
        if not (sibling.name.startswith(prefix) and pid.isdigit()):
            continue
        if int(pid) == os.getpid() or not process_is_running(int(pid)):
            _remove(sibling)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; on success it replaces ``path``, on error it is removed.

    Works for files and directories alike (the caller decides what to create at the yielded path).
    Temporaries that killed attempts left next to ``path`` are removed first.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(final)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        _remove(tmp)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def read_manifest(path: str | os.PathLike):
    """Read a manifest.csv keeping its types: class names like "0" and empty splits stay strings."""
    import pandas as pd

    return pd.read_csv(path, dtype={"path": str, "label": int, "class_name": str, "split": str}, keep_default_na=False)


def write_csv(frame, path: str | os.PathLike) -> None:
    """Write a pandas DataFrame atomically, without the index."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
