"""A local run's compute jobs fork from one process that imported torch, timm and the package once.

Every compute job is a Python process that spends 3-5 s importing torch, torch._dynamo (pulled in by
any optimizer and by torchvision), timm and scikit-learn before its first useful instruction; on a
grid of short cells (frozen heads, evaluation) that start-up is most of the run. The fork server is
the standard cure (Python's multiprocessing "forkserver" with preloaded modules, Android's zygote):

- In a local run, Snakemake's ``onstart`` starts ``python -m transfergrid.forkserver``, which
  imports ``PRELOAD`` and then listens on an abstract Unix socket. Its address goes to the jobs in
  the environment variable ``TRANSFERGRID_FORK_SERVER``.
- A compute job's script calls ``run_in_fork_server()`` before its own imports. It sends the
  server its script, arguments, working directory, environment and stdin/stdout/stderr. A handler
  process forks the job from the preloaded server, which runs the script exactly as
  ``python <script>`` would, and the job exits the way the forked job did: same status, or killed by
  the same signal (so Snakemake reports it the same way).
- A cluster job group (several jobs that SLURM runs one after another in one allocation) has a
  server of its own: the group's Snakemake process starts one in the allocation's batch step, which
  lives until the group is done, and the group's jobs, which it starts in ``srun`` steps (one per
  job, or one for the whole group), fork from it. A job uses a server only on the host and in the SLURM
  allocation that started it: a job submitted from a run whose head node has a server, or sent to
  another node, does not reach outside its allocation.
- Whenever the server cannot take the job, the job runs in its own process, and ends as a forked
  job does (without the interpreter's teardown): a cluster job that is not part of a group, another
  Python (a conda environment), a server that died, runs whose jobs may use CUDA,
  ``resources.fork_server: false``.

Fork safety: the server only imports. It never runs a torch operation (no OpenMP pool), so each
forked job starts like a fresh process: it takes the job's environment before anything reads it and
sets the thread counts a fresh process would read from ``OMP_NUM_THREADS``. CUDA cannot be trusted
to start in a process forked after its parent touched the driver, so runs whose jobs may use a GPU
start no server (``jobs_may_use_cuda``). Stdlib only at import: the Snakefile imports this module
while it parses.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import pickle
import runpy
import secrets
import select
import signal
import socket
import struct
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from .gpus import discover_devices
from .io import process_is_running

ENV = "TRANSFERGRID_FORK_SERVER"
_IN_FORKED_JOB = "TRANSFERGRID_FORKED_JOB"
# What the compute jobs import: torch and its compiler stack (any optimizer imports torch._dynamo),
# timm with torchvision, scikit-learn's metrics, and the package modules the job scripts use. The
# server listens once PRELOAD is in (what the first jobs of a run need), then imports PRELOAD_LATER
# (what the last jobs need) between jobs.
PRELOAD = ("torch", "torch._dynamo", "torchvision", "timm", "transfergrid.weights", "transfergrid.features")
PRELOAD_LATER = (
    "transfergrid.cell",
    "transfergrid.frozen",
    "transfergrid.evaluate",
    "transfergrid.pretrain",
    "transfergrid.aggregate",
    "transfergrid.recipes",
    "transfergrid.report",
)
WAIT_FOR_READY_S = 120  # a job waits this long for a server still importing, then runs on its own
TERMINATE_GRACE_S = 5
_HEADER = struct.Struct("!Q")
_STATUS = struct.Struct("!ii")  # (exit status, terminating signal or 0)


# ----------------------------------------------------------------------------------------------
# The Snakemake side: start and stop one server per local run


def start_fork_server(log_path: str | Path) -> subprocess.Popen:
    """Start the server (it preloads in the background) and tell the jobs started from now on where
    it listens. Returns the server process."""
    address = f"transfergrid-{os.getpid()}-{secrets.token_hex(6)}"
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "transfergrid.forkserver", "--address", address, "--parent", str(os.getpid())],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=os.getcwd(),
        )
    os.environ[ENV] = json.dumps({"address": address, "pid": server.pid, "python": _interpreter(), **_where()})
    return server


def jobs_may_use_cuda(device: str) -> bool:
    """Whether the jobs of a run with ``train.device`` = ``device`` may initialise CUDA, which a
    process forked from a server cannot be trusted to do: such runs start no server. ``auto`` asks
    the GPU leases' own discovery (no torch in Snakemake)."""
    if device == "cpu":
        return False
    return device == "cuda" or bool(discover_devices())


def stop_fork_server(server: subprocess.Popen | None) -> None:
    os.environ.pop(ENV, None)
    if server is None or server.poll() is not None:
        return
    server.terminate()
    try:
        server.wait(TERMINATE_GRACE_S)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def _interpreter() -> str:
    return os.path.realpath(sys.executable)


def _where() -> dict[str, str | None]:
    """Where a server serves: its host and SLURM allocation (None outside SLURM). A job elsewhere
    must not use it: on another host its address means nothing (and its PID is another process's),
    and on the same host outside the allocation the job would run beyond what SLURM granted."""
    return {"host": socket.gethostname(), "slurm_job": os.environ.get("SLURM_JOB_ID")}


# ----------------------------------------------------------------------------------------------
# The job side


def run_in_fork_server(wait_for_server: bool = True) -> None:
    """Run this job script in a fork of the server and exit as it did; when there is no server for
    this job, run it here (``_run_here_and_exit``). Returns only in the job's own run of the script.

    A job that needs torch waits for a server still importing it (sooner than importing it here).
    A job that does not (``wait_for_server=False``: the aggregation, the report) uses the server
    only if it already listens: in a run that only redoes the report, waiting for torch would cost
    more than the few imports the server saves the job."""
    if os.environ.get(_IN_FORKED_JOB):
        return
    connection = _connect(WAIT_FOR_READY_S if wait_for_server else 0)
    if connection is None:
        _run_here_and_exit()
    with connection:
        script = os.path.abspath(sys.argv[0])
        request = {"script": script, "argv": sys.argv, "cwd": os.getcwd(), "env": dict(os.environ)}
        payload = pickle.dumps(request)
        sys.stdout.flush()
        sys.stderr.flush()
        socket.send_fds(connection, [_HEADER.pack(len(payload)) + payload], [0, 1, 2])
        reply = _receive_exactly(connection, _STATUS.size)
    if reply is None:
        print("transfergrid: the fork server ended before the job did", file=sys.stderr, flush=True)
        os._exit(1)
    status, terminating_signal = _STATUS.unpack(reply)
    sys.stdout.flush()
    sys.stderr.flush()
    if terminating_signal:
        # Die of the same signal, as the job's own process would have.
        with contextlib.suppress(OSError, ValueError):  # SIGKILL and SIGSTOP have no handler to reset
            signal.signal(terminating_signal, signal.SIG_DFL)
        os.kill(os.getpid(), terminating_signal)
    os._exit(status)


def fork_server_in_reach() -> bool:
    """Whether this process's environment names a server that its jobs may use."""
    return _server_in_reach() is not None


def _server_in_reach() -> dict | None:
    try:
        server = json.loads(os.environ[ENV])
    except (KeyError, ValueError):
        return None
    if server.get("python") != _interpreter():
        return None  # another Python (a conda environment): its packages are not the server's
    if {key: server.get(key) for key in ("host", "slurm_job")} != _where():
        return None  # another host or SLURM allocation (see _where)
    if not process_is_running(server["pid"]):
        return None
    return server


def _connect(wait_s: float) -> socket.socket | None:
    server = _server_in_reach()
    if server is None:
        return None
    deadline = time.monotonic() + wait_s
    while True:
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            connection.connect("\0" + server["address"])
            return connection
        except OSError:
            connection.close()
        # Not listening yet: it is still importing (wait, that is sooner than importing here), or
        # it is gone (run here).
        if not process_is_running(server["pid"]) or time.monotonic() > deadline:
            return None
        time.sleep(0.05)


def _receive_exactly(connection: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


# ----------------------------------------------------------------------------------------------
# The server


def serve(address: str, parent: int) -> None:
    started = time.perf_counter()
    for module in PRELOAD:
        importlib.import_module(module)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind("\0" + address)
    listener.listen(64)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the handlers reap their jobs; nobody waits for them
    signal.signal(signal.SIGTERM, _stop)  # stop_fork_server: say how many jobs were served, then exit
    print(f"imported {', '.join(PRELOAD)} in {time.perf_counter() - started:.1f} s; serving", flush=True)
    later = list(PRELOAD_LATER)
    served = 0
    try:
        while os.getppid() == parent:  # Snakemake gone (even by SIGKILL): stop
            listener.settimeout(0.05 if later else 1.0)
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                if later:  # nobody waiting: import the next module for the jobs to come
                    importlib.import_module(later.pop(0))
                    if not later:
                        seconds = time.perf_counter() - started
                        print(f"imported {', '.join(PRELOAD_LATER)} by {seconds:.1f} s", flush=True)
                continue
            served += 1
            if os.fork() == 0:
                listener.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                _handle(connection)  # never returns
            connection.close()
    finally:
        print(f"stopped; {served} jobs served", flush=True)


def _stop(signum, frame) -> None:
    raise SystemExit(0)


def _handle(connection: socket.socket) -> None:
    """In a fork of the server: receive one job, fork it, report how it ended."""
    try:
        message, fds, _, _ = socket.recv_fds(connection, 1 << 20, 3)
        (size,) = _HEADER.unpack(message[: _HEADER.size])
        payload = message[_HEADER.size :]
        rest = _receive_exactly(connection, size - len(payload)) if len(payload) < size else b""
        request = pickle.loads(payload + (rest or b""))
        job = os.fork()
        if job == 0:
            connection.close()
            _run_job(request, fds)  # never returns
        for fd in fds:
            os.close(fd)
        status, terminating_signal = _watch(job, connection)
        with contextlib.suppress(OSError):  # the job's Snakemake process may be gone
            connection.sendall(_STATUS.pack(status, terminating_signal))
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(0)


def _watch(job: int, connection: socket.socket) -> tuple[int, int]:
    """Wait for the job; if the job's Snakemake process goes away (cancelled, killed), stop the job."""
    while True:
        pid, wait_status = os.waitpid(job, os.WNOHANG)
        if pid:
            if os.WIFSIGNALED(wait_status):
                return 1, os.WTERMSIG(wait_status)
            return os.waitstatus_to_exitcode(wait_status), 0
        readable, _, _ = select.select([connection], [], [], 0.2)
        if readable and not connection.recv(1, socket.MSG_PEEK):
            os.kill(job, signal.SIGTERM)
            deadline = time.monotonic() + TERMINATE_GRACE_S
            while not os.waitpid(job, os.WNOHANG)[0]:
                if time.monotonic() > deadline:
                    os.kill(job, signal.SIGKILL)
                    os.waitpid(job, 0)
                    break
                time.sleep(0.05)
            return 1, signal.SIGTERM


def _run_job(request: dict, fds: list[int]) -> NoReturn:
    """In the job's fork: become the job's process (streams, directory, environment, threads) and run
    its script as ``python <script>`` would."""

    def become_the_job() -> None:
        for target, fd in zip((0, 1, 2), fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ[_IN_FORKED_JOB] = "1"
        sys.argv = list(request["argv"])
        _threads_as_a_fresh_process()
        _reseed_numpy()
        runpy.run_path(request["script"], run_name="__main__")

    _exit_after(become_the_job)


def _run_here_and_exit() -> NoReturn:
    """No server for this job: run its script in this process from the top, as a forked job runs
    it, and end the same way: with the script's status, and without the interpreter's teardown
    (unloading torch takes about a second per job; a GPU job also tears down CUDA). The script's
    second run passes ``run_in_fork_server`` at once."""
    os.environ[_IN_FORKED_JOB] = "1"
    _exit_after(lambda: runpy.run_path(os.path.abspath(sys.argv[0]), run_name="__main__"))


def _exit_after(run: Callable[[], None]) -> NoReturn:
    """Run a job's script, then exit with its status as ``python <script>`` would (0, the code of
    its SystemExit, or 1 and the traceback on stderr), without the interpreter's teardown."""
    status = 1
    try:
        run()
        status = 0
    except SystemExit as exit_:
        if isinstance(exit_.code, int) or exit_.code is None:
            status = exit_.code or 0
        else:
            print(exit_.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(status)


def _threads_as_a_fresh_process() -> None:
    """Thread pools read OMP_NUM_THREADS (which Snakemake sets to the job's threads) when they load,
    which happened in the server: set them from the job's environment instead."""
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if not threads.isdigit() or int(threads) < 1:
        return
    import threadpoolctl
    import torch

    torch.set_num_threads(int(threads))
    threadpoolctl.threadpool_limits(int(threads))


def _reseed_numpy() -> None:
    """NumPy's global generator is seeded from the OS in a fresh process; every fork would otherwise
    share the server's state. (torch's default generator starts from a fixed seed anyway, and Python's
    random module reseeds itself after a fork.)"""
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()


def main() -> None:
    parser = argparse.ArgumentParser(description="transfergrid's fork server (started by the workflow)")
    parser.add_argument("--address", required=True)
    parser.add_argument("--parent", type=int, required=True)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt, SystemExit):  # SystemExit: stop_fork_server's SIGTERM
        serve(args.address, args.parent)
    # Exit without the interpreter's teardown: unloading torch, timm and matplotlib takes 1.5-3 s,
    # and Snakemake waits for this process at the end of every local run and cluster job group.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
