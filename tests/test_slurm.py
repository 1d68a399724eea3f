"""Integration: the grid through a real single-node SLURM with profiles/slurm.

tools/slurm-local/start.sh starts munge, slurmctld and slurmd (2 fake GPUs) with a private state
directory; a 4-cell digits grid then runs once locally and once with
`snakemake --workflow-profile profiles/slurm` (plus `--slurm-init-seconds-before-status-checks 1`:
the profile's 40 s first status check suits real jobs, not 10-second ones). The tests check that
every job went through SLURM with the resources the rules and the profile ask for (the GPU jobs
with --gpus=1), that each group's compute jobs forked from one server in the group's allocation,
that the cells' evaluation outputs equal the local run's, that a failing cell is reported with its
log paths, that a job the node cannot hold is refused at once and named, and that stop.sh stops
every daemon start.sh started.

Needs root and the Debian packages munge, slurm-client, slurmctld, slurmd (.ci/run installs
them): skipped without them, except under CI=true, where that is a failure. Takes 2-2.5 min on a
2-core machine.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_workflow import copy_workflow, write_config

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
START = ROOT / "tools" / "slurm-local" / "start.sh"
STOP = ROOT / "tools" / "slurm-local" / "stop.sh"
PACKAGES = ("munge", "slurm-client", "slurmctld", "slurmd")
DAEMONS = ("slurmctld", "slurmd", "munged")
TIMEOUT_S = 900

# ---- What the test assumes about the workflow; adapt here when rules or paths change. ----------
CONFIG = {
    "datasets": {"digits": {"source": "builtin", "name": "digits", "max_per_class": 20}},
    "grid": {
        "datasets": ["digits"],
        "fractions": [1.0],
        "backbones": [{"name": "resnet18", "weights": ["none"]}],
        "strategies": ["full", "frozen"],
        "heads": ["linear"],
        "seeds": [0, 1],
    },
    "split": {"val": 0.25, "test": 0.25, "seed": 0},
    "train": {"image_size": 32, "epochs": 1, "batch_size": 16, "augment": "none", "device": "cpu"},
    "resources": {"train_threads": 1, "cache_threads": 1, "train_mem_mb": 1000, "train_runtime": 10},
}
CELL_DIR = "results/cells/digits/1.0/resnet18/none/{strategy}/linear/seed{seed}"
CELLS = [CELL_DIR.format(strategy=s, seed=n) for s in ("full", "frozen") for n in (0, 1)]
# Files that depend only on the seeds (test.json also records inference time: compared without it).
EVALUATION_FILES = ("test.json", "predictions.csv", "confusion.csv")
# SLURM jobs of the grid with profiles/slurm, by their log folder under .snakemake/slurm_logs
# (rule_<rule> or group_<group>_<rules>): one preparation group; per seed one frozen group (the
# random base's feature extraction, its heads' fitting and evaluation) and one cell group (the full
# recipe: both seeds' training and their one evaluation).
EXPECTED_SUBMISSIONS = {"group_prep": 1, "group_frozen": 2, "group_cell": 1}
# The config trains on the CPU (this machine has no GPU); the full cells ask for a GPU anyway, as
# on a GPU cluster, to check the --gpus submission: SLURM schedules its fake GPU.
GPU_REQUEST = ["--set-resources", "train_candidate:gpu=1", "evaluate_recipe:gpu=1"]
GPU_SUBMISSIONS = {"group_cell"}
# On the CPU, the compute jobs of each group fork from one server in the group's allocation: the two
# frozen groups' extraction, fitting and evaluation, and the cell group's two trainings and one
# evaluation. The preparation group has no compute job and starts no server.
FORK_SERVER_LOGS = "results/logs/fork_server"
JOBS_SERVED_PER_GROUP = [3, 3, 3]
LOCAL_RULES = ["aggregate", "report", "all"]  # the jobs the head node runs for this grid
# The failing cell: a third seed whose training script raises.
FAILING_CELL = CELL_DIR.format(strategy="full", seed=2)
FAILING_SCRIPT = "workflow/scripts/train_candidate.py"
FAILING_TARGET = "digits/1.0/resnet18/none/full/linear/seed2/lr1.0"  # what the failure line names
FAILING_RULE_LOG = f"results/logs/train_candidate/{FAILING_TARGET}.log"
FAILING_ERROR = r"Error in (group cell|rule train_candidate)"  # Snakemake's heading for the failed job
# More CPUs for the preparation than the node has (start.sh gives the node this machine's CPUs): refused.
REFUSED_CPUS = (os.cpu_count() or 2) + 1
# -------------------------------------------------------------------------------------------------


def missing_packages() -> list[str]:
    if not shutil.which("dpkg-query"):
        return list(PACKAGES)
    missing = []
    for package in PACKAGES:
        status = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
        if "install ok installed" not in status.stdout:
            missing.append(package)
    return missing


def clean_env(**extra) -> dict[str, str]:
    """No SLURM_* from an enclosing job, no SLURM_CONF: start.sh links its config into /etc/slurm."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return {**env, "HF_HUB_OFFLINE": "1", **extra}


def run_snakemake(workdir: Path, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    """snakemake in workdir, wrapped in `timeout`; returns the result (stdout+stderr) and seconds."""
    command = ["timeout", str(TIMEOUT_S), sys.executable, "-m", "snakemake", "-s", str(workdir / "Snakefile")]
    command += ["--directory", str(workdir), *args]
    started = time.monotonic()
    result = subprocess.run(
        command,
        cwd=workdir,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=TIMEOUT_S + 60,
    )
    return result, time.monotonic() - started


def grid_copy(workdir: Path) -> Path:
    copy_workflow(workdir)
    shutil.copytree(ROOT / "profiles", workdir / "profiles")
    write_config(workdir, CONFIG)
    return workdir


def sbatch_calls(output: str) -> list[dict]:
    """The plugin's `sbatch call:` lines (logged with --verbose): options before --wrap, by name."""
    calls = []
    for line in re.findall(r"sbatch call: (sbatch .*)", output):
        options = shlex.split(line.split(" --wrap=", 1)[0])
        parsed = {"line": line.split(" --wrap=", 1)[0]}
        i = 1
        while i < len(options):
            option = options[i]
            if "=" in option:
                key, value = option.split("=", 1)
            elif i + 1 < len(options) and not options[i + 1].startswith("-"):
                key, value = option, options[i + 1]
                i += 1
            else:
                key, value = option, True
            parsed[key] = value
            i += 1
        folder = Path(parsed["--output"]).relative_to(Path(parsed["-D"]) / ".snakemake" / "slurm_logs").parts[0]
        parsed["kind"] = next((k for k in EXPECTED_SUBMISSIONS if folder == k or folder.startswith(k + "_")), folder)
        calls.append(parsed)
    return calls


def scontrol_job(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, env=clean_env())
    return dict(field.split("=", 1) for field in out.stdout.split() if "=" in field)


def minutes(time_limit: str) -> int:
    """SLURM's [days-]hh:mm:ss as minutes."""
    days, _, clock = time_limit.rpartition("-")
    hours, mins, _ = (int(part) for part in clock.split(":"))
    return int(days or 0) * 1440 + hours * 60 + mins


def pids(state: Path) -> dict[str, int]:
    return {name: int(p.read_text()) for name in DAEMONS if (p := state / "run" / f"{name}.pid").exists()}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    missing = missing_packages()
    problem = f"Debian packages missing: {' '.join(missing)} (.ci/run installs them)" if missing else None
    if os.geteuid() != 0:
        problem = "needs root to run the SLURM daemons"
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: {problem}")
        pytest.skip(problem)
    state = tmp_path_factory.mktemp("slurm-state")
    env = clean_env(SLURM_LOCAL_DIR=str(state), SLURM_LOCAL_NO_INSTALL="1")
    started = time.monotonic()
    result = subprocess.run(["bash", str(START)], env=env, capture_output=True, text=True, timeout=300)
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    print(f"\nstart.sh: {seconds:.1f} s")
    yield {"state": state, "env": env, "pids": pids(state)}
    subprocess.run(["bash", str(STOP)], env=env, capture_output=True, timeout=120)  # a no-op if stopped


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """The same grid without SLURM: the reference outputs (profiles/default applies)."""
    workdir = grid_copy(tmp_path_factory.mktemp("local"))
    result, seconds = run_snakemake(workdir, "--cores", "2")
    assert result.returncode == 0, result.stdout[-5000:]
    print(f"\nlocal run: {seconds:.0f} s")
    return workdir


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory):
    workdir = grid_copy(tmp_path_factory.mktemp("slurm"))
    profile = workdir / "profiles" / "slurm"
    result, seconds = run_snakemake(
        workdir,
        "--workflow-profile",
        str(profile),
        "--slurm-init-seconds-before-status-checks",
        "1",
        *GPU_REQUEST,
        "--verbose",
    )
    assert result.returncode == 0, result.stdout[-8000:]
    calls = sbatch_calls(result.stdout)
    gpu_call = next(call["line"] for call in calls if "--gpus" in call)
    print(f"\nSLURM run: {seconds:.0f} s, {len(calls)} SLURM jobs; one sbatch call:\n{gpu_call}")
    fork_servers = {log.name: log.read_text() for log in (workdir / FORK_SERVER_LOGS).glob("group_*.log")}
    return {"workdir": workdir, "output": result.stdout, "calls": calls, "profile": profile, "servers": fork_servers}


@pytest.fixture(scope="module")
def failed_run(slurm_run):
    """A third seed whose training raises, run after the grid in the same directory."""
    workdir = slurm_run["workdir"]
    write_config(workdir, {**CONFIG, "grid": {**CONFIG["grid"], "seeds": [0, 1, 2]}})
    script = workdir / FAILING_SCRIPT
    script.write_text(
        "if 'seed2' in str(snakemake.output[0]):\n"
        "    raise RuntimeError('test_slurm: this cell is made to fail')\n" + script.read_text()
    )
    result, _ = run_snakemake(
        workdir,
        "--workflow-profile",
        str(slurm_run["profile"]),
        "--slurm-init-seconds-before-status-checks",
        "1",
        *GPU_REQUEST,  # before the next option: --set-resources takes every word up to it
        "--retries",
        "0",
        f"{FAILING_CELL}/test.json",
    )
    return {"workdir": workdir, "result": result}


@pytest.fixture(scope="module")
def refused_run(cluster, tmp_path_factory):
    """The grid with a preparation job that asks for more CPUs than the node has."""
    workdir = grid_copy(tmp_path_factory.mktemp("refused"))
    write_config(workdir, {**CONFIG, "resources": {**CONFIG["resources"], "cache_threads": REFUSED_CPUS}})
    result, seconds = run_snakemake(workdir, "--workflow-profile", str(workdir / "profiles" / "slurm"))
    return {"result": result, "seconds": seconds}


def test_every_job_ran_through_slurm(slurm_run):
    output, calls = slurm_run["output"], slurm_run["calls"]
    kinds = {kind: sum(call["kind"] == kind for call in calls) for kind in {call["kind"] for call in calls}}
    assert kinds == EXPECTED_SUBMISSIONS
    assert re.findall(r"^localrule (\w+):", output, re.M) == LOCAL_RULES
    job_ids = re.findall(r"has been submitted with SLURM jobid (\d+)", output)
    assert len(job_ids) == len(calls)
    # SLURM's own record (finished jobs stay listed for MinJobAge = 600 s).
    run_id = re.search(r"SLURM run ID: (\S+)", output).group(1)
    listed = subprocess.run(
        ["squeue", "--states=all", "--noheader", "--name", run_id, "--format=%i %T"],
        capture_output=True,
        text=True,
        env=clean_env(),
    ).stdout.split("\n")
    states = dict(line.split() for line in listed if line.strip())
    assert states == dict.fromkeys(job_ids, "COMPLETED")


def test_submissions_carry_the_requested_resources(slurm_run):
    res = CONFIG["resources"]
    job_ids = re.findall(r"has been submitted with SLURM jobid (\d+)", slurm_run["output"])
    for call in slurm_run["calls"]:
        assert {"-t", "--mem", "--cpus-per-task", "-p"} <= set(call), call["line"]
        assert ("--gpus" in call) == (call["kind"] in GPU_SUBMISSIONS), call["line"]
        if call["kind"] in GPU_SUBMISSIONS:
            assert call["--gpus"] == "1"
            assert call["--mem"] == str(res["train_mem_mb"]) and call["--cpus-per-task"] == str(res["train_threads"])
    by_kind = {call["kind"]: call for call in slurm_run["calls"]}
    # A group's jobs run one after another: its time limit is the sum of theirs (two trainings +
    # evaluation; extraction + fitting + evaluation), each a compute job with the configured runtime.
    assert by_kind["group_cell"]["-t"] == str(3 * res["train_runtime"])
    assert by_kind["group_frozen"]["-t"] == str(3 * res["train_runtime"])
    # What SLURM recorded for each job matches what was asked (submissions run in parallel, so a
    # job is paired with a call of the same comment, i.e. the same rule or group).
    calls_by_comment = {}
    for call in slurm_run["calls"]:
        calls_by_comment.setdefault(call["--comment"], []).append(call)
    for job_id in job_ids:
        job = scontrol_job(job_id)
        call = calls_by_comment[job["Comment"]].pop()
        assert job["JobState"] == "COMPLETED"
        assert minutes(job["TimeLimit"]) == int(call["-t"])
        assert job["MinMemoryNode"] == f"{call['--mem']}M"
        assert ("gpu:1" in job.get("TresPerJob", "")) == (call["kind"] in GPU_SUBMISSIONS)


def test_the_compute_jobs_of_a_group_fork_from_one_server_in_its_allocation(slurm_run):
    served = [re.search(r"stopped; (\d+) jobs served", log) for log in slurm_run["servers"].values()]
    assert all(served), slurm_run["servers"]
    assert sorted(int(match.group(1)) for match in served) == JOBS_SERVED_PER_GROUP


def test_outputs_equal_a_local_run(slurm_run, local_run):
    for cell in CELLS:
        for name in EVALUATION_FILES:
            slurm_file, local_file = slurm_run["workdir"] / cell / name, local_run / cell / name
            if name == "test.json":
                slurm_metrics, local_metrics = json.loads(slurm_file.read_text()), json.loads(local_file.read_text())
                slurm_metrics.pop("inference"), local_metrics.pop("inference")
                assert slurm_metrics == local_metrics, f"{cell}/{name} differs"
            else:
                assert slurm_file.read_bytes() == local_file.read_bytes(), f"{cell}/{name} differs"
    assert (slurm_run["workdir"] / "results" / "report" / "index.html").exists()


def test_a_finished_cluster_run_leaves_nothing_to_do(slurm_run):
    """What the head node recorded for the cluster's jobs (their parameters, code versions
    included) matches what it plans: the same command again submits nothing. Runs before
    failed_run adds a seed to this directory."""
    result, _ = run_snakemake(slurm_run["workdir"], "--workflow-profile", str(slurm_run["profile"]), *GPU_REQUEST, "-n")
    assert result.returncode == 0 and "Nothing to be done" in result.stdout, result.stdout[-5000:]


def test_a_failing_cell_is_reported_with_its_logs(failed_run):
    result, workdir = failed_run["result"], failed_run["workdir"]
    assert result.returncode != 0
    output = result.stdout
    error = re.search(FAILING_ERROR, output)
    assert error, output[-3000:]
    report = output[error.start() :]
    # The report names the rule's log and the SLURM job's log; the latter holds the traceback.
    assert FAILING_RULE_LOG in report
    slurm_log = re.search(r"log: (\S+/\.snakemake/slurm_logs/\S+\.log)", report).group(1)
    assert "made to fail" in Path(slurm_log).read_text()
    job_id = Path(slurm_log).stem
    assert scontrol_job(job_id)["JobState"] == "FAILED"
    assert not (workdir / FAILING_CELL / "test.json").exists()
    # The run ends with a line for the failed training that points to where its traceback is.
    summary = output[output.index("transfergrid: ") :].splitlines()
    line = next(line for line in summary if line.startswith(f"  train_candidate {FAILING_TARGET}: "))
    assert slurm_log in line or "made to fail" in line, line


def test_a_job_the_node_cannot_hold_is_refused_at_once_and_named(refused_run):
    """SLURM refuses the submission (EnforcePartLimits) instead of queueing it forever, and the run
    ends with a line for each job of the refused group, though Snakemake does not print sbatch's
    message for a group."""
    result = refused_run["result"]
    assert result.returncode != 0 and refused_run["seconds"] < 120, result.stdout[-3000:]
    summary = result.stdout[result.stdout.index("transfergrid: ") :]
    assert "  obtain_dataset digits: its job group prep never ran: SLURM refused its submission" in summary


def test_stop_stops_every_daemon_start_started(cluster, slurm_run, failed_run):
    started = cluster["pids"]
    assert {"slurmctld", "slurmd"} <= set(started)
    result = subprocess.run(["bash", str(STOP)], env=cluster["env"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for name, pid in started.items():
        assert f"stopped {name} ({pid})" in result.stdout
        assert not Path(f"/proc/{pid}").exists(), f"{name} ({pid}) still runs"
    assert not pids(cluster["state"])
    for name in ("slurm.conf", "gres.conf"):
        assert not Path(f"/etc/slurm/{name}").is_symlink()
