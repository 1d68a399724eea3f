"""The fork server (transfergrid/forkserver.py), started for real: a job script hands itself to it and
must behave exactly as `python <script>` would (output, status, signal deaths, environment, working
directory), run on its own whenever there is no usable server, and never outlive its Snakemake."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from transfergrid import forkserver
from transfergrid.gpus import discover_devices
from transfergrid.io import process_is_running

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_PATH = str(ROOT / "workflow")

# A job script as Snakemake runs it: it hands itself to the server first, then reports where it ran.
JOB = textwrap.dedent(
    """
    import os
    import sys
    torch_already_imported = "torch" in sys.modules
    from transfergrid.forkserver import run_in_fork_server

    run_in_fork_server(wait_for_server=os.environ.get("JOB_WAITS", "1") == "1")

    import torch

    print(f"preloaded={torch_already_imported} threads={torch.get_num_threads()} cwd={os.getcwd()}", flush=True)
    print(f"pid={os.getpid()} marker={os.environ.get('JOB_MARKER')} argv={sys.argv[1:]}", flush=True)
    print("to stderr", file=sys.stderr, flush=True)
    action = sys.argv[1] if len(sys.argv) > 1 else ""
    if action == "exit3":
        sys.exit(3)
    if action == "raise":
        raise RuntimeError("a bug in the job")
    if action == "sigkill":
        os.kill(os.getpid(), 9)
    if action == "sleep":
        open(sys.argv[2], "w").write(str(os.getpid()))
        import time
        time.sleep(60)
    """
)


@pytest.fixture(scope="module")
def server():
    """A running server, its address exported as Snakemake's onstart would, and the server's log."""
    saved = dict(os.environ)
    os.environ["PYTHONPATH"] = os.pathsep.join([PACKAGE_PATH, os.environ.get("PYTHONPATH", "")])
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"fork_server_test_{os.getpid()}.log"
    process = forkserver.start_fork_server(log)
    try:
        yield process, log
    finally:
        forkserver.stop_fork_server(process)
        os.environ.clear()
        os.environ.update(saved)
        log.unlink(missing_ok=True)


def run_job(tmp_path, *args, env=None, **kwargs):
    script = tmp_path / "job.py"
    script.write_text(JOB)
    job_env = {**os.environ, "JOB_MARKER": "from-the-job", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=tmp_path,
        env=job_env,
        capture_output=True,
        text=True,
        timeout=180,
        **kwargs,
    )


def test_a_job_runs_in_a_fork_of_the_preloaded_server(server, tmp_path):
    result = run_job(tmp_path, "plain")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # torch was already imported when the script started: it ran in the server's fork, and the
    # job's own environment, arguments, working directory and thread count reached it.
    assert lines[0] == f"preloaded=True threads=1 cwd={tmp_path}"
    assert lines[1].endswith("marker=from-the-job argv=['plain']")
    assert result.stderr == "to stderr\n"


def test_exit_status_exceptions_and_signals_reach_snakemake_unchanged(server, tmp_path):
    assert run_job(tmp_path, "exit3").returncode == 3
    raised = run_job(tmp_path, "raise")
    assert raised.returncode == 1 and "RuntimeError: a bug in the job" in raised.stderr
    # Snakemake reports "died with SIGKILL" for a fresh process: the job process dies the same way.
    assert run_job(tmp_path, "sigkill").returncode == -signal.SIGKILL


def test_a_killed_job_process_takes_its_fork_with_it(server, tmp_path):
    pid_file = tmp_path / "pid"
    script = tmp_path / "job.py"
    script.write_text(JOB)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    job = subprocess.Popen([sys.executable, str(script), "sleep", str(pid_file)], cwd=tmp_path, env=env)
    deadline = time.monotonic() + 120
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline and job.poll() is None
        time.sleep(0.1)
    forked = int(pid_file.read_text())
    assert forked != job.pid  # it ran in the server's fork, not in the process Snakemake started
    job.kill()  # what Snakemake does to a cancelled job
    job.wait()
    deadline = time.monotonic() + 15
    while process_is_running(forked):
        assert time.monotonic() < deadline, "the forked job outlived its job process"
        time.sleep(0.1)


def test_without_a_usable_server_the_job_runs_on_its_own(server, tmp_path):
    address = json.loads(os.environ[forkserver.ENV])
    other_python = json.dumps({**address, "python": "/opt/conda/envs/other/bin/python"})
    gone = json.dumps({**address, "address": "transfergrid-nobody-listens", "pid": 2**22 + 17})
    # A server of another host, or of a SLURM allocation that is not the job's (a run's head node,
    # another job's allocation on the same node), is out of the job's reach even when it listens.
    other_host = json.dumps({**address, "host": "another-node"})
    other_allocation = json.dumps({**address, "slurm_job": "4242"})
    unusable = (other_python, gone, other_host, other_allocation)
    for env in ({forkserver.ENV: descriptor} for descriptor in unusable):
        started = time.monotonic()
        result = run_job(tmp_path, "plain", env=env)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("preloaded=False"), env
        assert time.monotonic() - started < 60  # no waiting for a server that will never listen
    no_server = {k: v for k, v in os.environ.items() if k != forkserver.ENV}
    result = subprocess.run(
        [sys.executable, str(tmp_path / "job.py")], cwd=tmp_path, env=no_server, capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stdout.startswith("preloaded=False")


def test_a_job_that_needs_no_torch_does_not_wait_for_a_server_still_importing(server, tmp_path):
    # A live server process that does not listen yet: a job that waits would wait WAIT_FOR_READY_S.
    importing = json.dumps({**json.loads(os.environ[forkserver.ENV]), "address": "transfergrid-not-yet"})
    started = time.monotonic()
    result = run_job(tmp_path, "plain", env={forkserver.ENV: importing, "JOB_WAITS": "0"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("preloaded=False")
    assert time.monotonic() - started < forkserver.WAIT_FOR_READY_S / 2
    # Once the server listens (a job that waits makes sure of it), such a job forks from it too.
    assert run_job(tmp_path, "plain").stdout.startswith("preloaded=True")
    result = run_job(tmp_path, "plain", env={"JOB_WAITS": "0"})
    assert result.returncode == 0 and result.stdout.startswith("preloaded=True"), result.stdout + result.stderr


def test_the_server_stops_with_its_snakemake(tmp_path):
    """Snakemake killed with SIGKILL cannot stop the server: the server notices and stops itself."""
    launcher = tmp_path / "launcher.py"
    launcher.write_text(
        textwrap.dedent(
            """
            import sys, time
            from transfergrid.forkserver import start_fork_server
            server = start_fork_server(sys.argv[1])
            print(server.pid, flush=True)
            time.sleep(120)
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": PACKAGE_PATH}
    snakemake = subprocess.Popen(
        [sys.executable, str(launcher), str(tmp_path / "server.log")], env=env, stdout=subprocess.PIPE, text=True
    )
    server_pid = int(snakemake.stdout.readline())
    snakemake.send_signal(signal.SIGKILL)
    snakemake.wait()
    deadline = time.monotonic() + 60  # it may still be importing torch when its parent dies
    while process_is_running(server_pid):
        assert time.monotonic() < deadline, "the server outlived its Snakemake"
        time.sleep(0.2)


def exit_handler_marker(tmp_path, monkeypatch) -> Path:
    """A file that an exit handler (registered by sitecustomize in every Python started from now on)
    creates when the interpreter runs its teardown, checked here to appear for a plain interpreter."""
    marker = tmp_path / "teardown_ran"
    (tmp_path / "sitecustomize.py").write_text(
        f"import atexit\natexit.register(lambda: open({str(marker)!r}, 'w').close())\n"
    )
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), PACKAGE_PATH]))
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    assert marker.exists(), "the exit handler this test relies on did not run in a plain interpreter"
    marker.unlink()
    return marker


def test_a_stopped_server_exits_at_once_without_the_interpreter_teardown(tmp_path, monkeypatch):
    """Unloading torch, timm and matplotlib takes seconds, and Snakemake waits for the server at the
    end of every run and cluster job group: stopped, it logs what it served and exits with status 0
    without running the interpreter's exit handlers."""
    marker = exit_handler_marker(tmp_path, monkeypatch)
    log = tmp_path / "server.log"
    server = forkserver.start_fork_server(log)
    deadline = time.monotonic() + 120
    while "serving" not in log.read_text():
        assert server.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    forkserver.stop_fork_server(server)
    assert server.returncode == 0
    assert log.read_text().splitlines()[-1] == "stopped; 0 jobs served"
    assert not marker.exists()


def test_without_a_server_the_job_ends_as_a_forked_job_does(tmp_path, monkeypatch):
    """A job with no server (a GPU run, resources.fork_server false) runs in its own process, and
    ends as a forked job does: the script's status, without the teardown (about a second a job)."""
    monkeypatch.delenv(forkserver.ENV, raising=False)
    marker = exit_handler_marker(tmp_path, monkeypatch)
    result = run_job(tmp_path, "plain")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"preloaded=False threads=1 cwd={tmp_path}")
    assert result.stderr == "to stderr\n"
    assert not marker.exists()
    assert run_job(tmp_path, "exit3").returncode == 3
    raised = run_job(tmp_path, "raise")
    assert raised.returncode == 1 and "RuntimeError: a bug in the job" in raised.stderr
    assert run_job(tmp_path, "sigkill").returncode == -signal.SIGKILL


def test_runs_that_may_use_cuda_start_no_server():
    # CUDA cannot be trusted to start in a process forked after its parent touched the driver.
    assert not forkserver.jobs_may_use_cuda("cpu")
    assert forkserver.jobs_may_use_cuda("cuda")
    # auto: whatever the GPU leases would find on this machine.
    assert forkserver.jobs_may_use_cuda("auto") == bool(discover_devices())
