"""atomic_path: nothing half-written at the target, and no temporaries left by killed attempts."""

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from transfergrid.io import atomic_path, read_json, write_json

WORKFLOW = Path(__file__).resolve().parents[1] / "workflow"

_KILLED_INSIDE_ATOMIC_PATH = """
import sys, time
sys.path.insert(0, sys.argv[1])
from transfergrid.io import atomic_path
with atomic_path(sys.argv[2]) as tmp:
    if sys.argv[3] == "dir":
        (tmp / "sub").mkdir(parents=True)
        (tmp / "sub" / "half.png").write_bytes(b"half")
    else:
        tmp.write_bytes(b"half")
    print("ready", flush=True)
    time.sleep(60)
"""


def _killed_inside_atomic_path(target: Path, kind: str) -> int:
    """Run a writer in a child process, SIGKILL it while it holds its temporary; return its pid."""
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_INSIDE_ATOMIC_PATH, str(WORKFLOW), str(target), kind], stdout=subprocess.PIPE
    )
    assert child.stdout.readline() == b"ready\n"
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    return child.pid


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_temporary_of_a_killed_writer_is_removed_at_the_next_attempt(tmp_path, kind):
    target = tmp_path / "out" / "result.json"
    pid = _killed_inside_atomic_path(target, kind)
    assert _names(target.parent) == [f".result.json.tmp-{pid}"]  # what the kill leaves
    write_json(target, {"ok": True})
    assert _names(target.parent) == ["result.json"] and read_json(target) == {"ok": True}


def test_temporary_of_a_running_writer_is_kept(tmp_path):
    """Only dead processes' temporaries go: a live one may still be writing (another job's pid here)."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".result.json.tmp-{sleeper.pid}"
        live.write_bytes(b"in progress")
        other_target = tmp_path / ".other.json.tmp-999999999"  # a sibling of another target: not ours
        other_target.write_bytes(b"not ours to judge")
        write_json(tmp_path / "result.json", [1])
        assert _names(tmp_path) == sorted([live.name, other_target.name, "result.json"])
    finally:
        sleeper.kill()
        sleeper.wait()


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "x.bin") as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("interrupted")
    assert _names(tmp_path) == []
