"""GPU leases without a GPU: real processes compete for N simulated devices (flock on lock files)."""

import itertools
import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from transfergrid import gpus
from transfergrid.gpus import NoFreeGpu, discover_devices, lease_gpu

ROOT = Path(__file__).resolve().parents[1]

# A job: lease a device, report when it got it, hold it, report when it let go.
WORKER = """
import json, os, sys, time
from transfergrid.gpus import lease_gpu

run_dir, devices, hold, out = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
requested = time.time()
with lease_gpu(run_dir, devices=devices, poll=0.02) as device:
    start = time.time()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    print("leased", device, flush=True)
    time.sleep(hold)
    end = time.time()
with open(out, "w") as f:
    json.dump({"device": device, "visible": visible, "requested": requested, "start": start, "end": end}, f)
"""


def job_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("SLURM_JOB_ID", "CUDA_VISIBLE_DEVICES")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "workflow"), env.get("PYTHONPATH", "")])
    return {**env, **extra}


def start_job(run_dir, devices, hold, out, **env):
    command = [sys.executable, "-c", WORKER, str(run_dir), json.dumps(devices), str(hold), str(out)]
    return subprocess.Popen(command, env=job_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until_leased(process):
    """Block until the worker printed its lease line (so it holds the device now)."""
    line = process.stdout.readline()
    assert line.startswith("leased"), (line, process.stderr.read() if process.poll() is not None else "")
    return line.split()[1]


def finish(process, timeout=60):
    _, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, stderr
    return stderr


@pytest.fixture(autouse=True)
def no_scheduler(monkeypatch):
    """Tests start outside SLURM with no device restriction, whatever machine runs them."""
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)


def test_concurrent_jobs_never_share_a_device(tmp_path):
    devices, workers, hold = [0, 1, 2], 6, 0.6
    outs = [tmp_path / f"job{i}.json" for i in range(workers)]
    processes = [start_job(tmp_path / "leases", devices, hold, out) for out in outs]
    for process in processes:
        finish(process)
    records = [json.loads(out.read_text()) for out in outs]
    assert {r["device"] for r in records} == {"0", "1", "2"}
    assert all(r["visible"] == r["device"] for r in records)
    for device in ("0", "1", "2"):
        spans = sorted((r["start"], r["end"]) for r in records if r["device"] == device)
        for (_, end), (next_start, _) in itertools.pairwise(spans):
            assert next_start >= end, f"device {device} held twice at once: {spans}"
    # Six jobs on three devices: at least one job had to wait for another to finish.
    assert max(r["start"] - r["requested"] for r in records) >= hold * 0.9


def test_a_killed_holder_loses_its_lease(tmp_path):
    leases = tmp_path / "leases"
    holder = start_job(leases, [0], 600, tmp_path / "holder.json")
    try:
        assert wait_until_leased(holder) == "0"
        with pytest.raises(NoFreeGpu), lease_gpu(leases, devices=[0], wait=False):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate(timeout=30)
    assert holder.returncode == -signal.SIGKILL
    # The kernel released the flock with the process: the next job gets the device at once.
    next_job = start_job(leases, [0], 0, tmp_path / "next.json")
    finish(next_job, timeout=30)
    record = json.loads((tmp_path / "next.json").read_text())
    assert record["device"] == "0" and record["start"] - record["requested"] < 5


def test_with_every_device_busy_a_job_waits_then_gets_one(tmp_path):
    leases = tmp_path / "leases"
    holder = start_job(leases, [0, 1], 1.5, tmp_path / "a.json")
    other = start_job(leases, [0, 1], 1.5, tmp_path / "b.json")
    wait_until_leased(holder)
    wait_until_leased(other)
    waiter = start_job(leases, [0, 1], 0, tmp_path / "waiter.json")
    stderr = finish(waiter)
    finish(holder)
    finish(other)
    assert "waiting for a free GPU" in stderr
    held = [json.loads((tmp_path / name).read_text()) for name in ("a.json", "b.json")]
    got = json.loads((tmp_path / "waiter.json").read_text())
    first_free = min(r["end"] for r in held if r["device"] == got["device"])
    assert got["start"] >= first_free


def test_slurm_assignment_is_kept_without_a_lease(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    messages = []
    with lease_gpu(tmp_path / "leases", devices=[0, 1, 2], log=messages.append) as device:
        assert device == "1"
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    assert not (tmp_path / "leases").exists()
    assert "SLURM" in messages[0]


def test_slurm_job_without_a_gpu_assignment_still_leases(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")  # e.g. a cluster without GRES: nothing chosen
    with lease_gpu(tmp_path, devices=[3], log=lambda m: None) as device:
        assert device == "3" and os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    assert (tmp_path / "gpu-3.lock").exists()


def test_the_environment_is_restored_and_the_device_freed(tmp_path):
    with lease_gpu(tmp_path, devices=[0], log=lambda m: None) as device:
        assert device == "0"
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
        assert os.environ["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert "CUDA_VISIBLE_DEVICES" not in os.environ and "CUDA_DEVICE_ORDER" not in os.environ
    with lease_gpu(tmp_path, devices=[0], wait=False, log=lambda m: None) as device:
        assert device == "0"


def test_busy_devices_and_a_timeout_raise(tmp_path):
    with lease_gpu(tmp_path, devices=[0], log=lambda m: None):
        with pytest.raises(NoFreeGpu, match="leased"), lease_gpu(tmp_path, devices=[0], wait=False):
            pass
        started = time.monotonic()
        with pytest.raises(NoFreeGpu, match="within"), lease_gpu(tmp_path, [0], poll=0.05, timeout=0.3, log=print):
            pass
        assert time.monotonic() - started < 5


def test_no_gpu_means_no_lease(tmp_path, monkeypatch):
    monkeypatch.setattr(gpus.shutil, "which", lambda name: None)
    assert discover_devices() == []
    with lease_gpu(tmp_path / "leases") as device:
        assert device is None
        assert "CUDA_VISIBLE_DEVICES" not in os.environ
    assert not (tmp_path / "leases").exists()


@pytest.mark.parametrize(
    ("visible", "expected"),
    [("", []), ("-1", []), ("2,3", ["2", "3"]), ("1,-1,2", ["1"]), ("GPU-8f2c", ["GPU-8f2c"])],
)
def test_an_explicit_cuda_visible_devices_limits_the_candidates(monkeypatch, visible, expected):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert discover_devices() == expected


def test_inherited_visible_devices_are_leased_in_cuda_numbering(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    held = gpus._try_lock(tmp_path / "gpu-2.lock")  # another job holds device 2
    try:
        with lease_gpu(tmp_path, log=lambda m: None) as device:
            assert device == "3" and os.environ["CUDA_VISIBLE_DEVICES"] == "3"
            assert "CUDA_DEVICE_ORDER" not in os.environ
    finally:
        os.close(held)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,3"


def test_devices_are_discovered_with_nvidia_smi(tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\n[ "$1" = "--query-gpu=index" ] && printf "0\\n1\\n"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    assert discover_devices() == ["0", "1"]


def test_a_lease_after_cuda_initialised_is_refused(tmp_path, monkeypatch):
    fake_torch = types.SimpleNamespace(cuda=types.SimpleNamespace(is_initialized=lambda: True))
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    with pytest.raises(RuntimeError, match="before CUDA is initialised"), lease_gpu(tmp_path, devices=[0]):
        pass


def test_the_module_does_not_import_torch():
    code = "import sys, transfergrid.gpus; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], env=job_env(), check=True, timeout=60)
