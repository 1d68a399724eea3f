"""End-to-end: real Snakemake on tiny real data (scikit-learn's digits), from every source kind.

One module-scoped run builds a grid over three datasets (built-in, a folder, and a URL archive
served from 127.0.0.1); the tests then check its outputs, that a re-run has nothing to do, that
adding a seed trains only the new cell, and that editing the report code re-renders only the report.
"""

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from sklearn.datasets import load_digits

from transfergrid.downloads import sha256_of

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
IMAGES_PER_CLASS = 8


def copy_workflow(workdir: Path) -> None:
    """A private copy of the workflow, so a test may edit its code without touching the repo."""
    shutil.copy(ROOT / "Snakefile", workdir / "Snakefile")
    for folder in ("workflow", "envs"):
        shutil.copytree(ROOT / folder, workdir / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    if not (workdir / "Snakefile").exists():
        copy_workflow(workdir)
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(workdir / "Snakefile"),
        "--directory",
        str(workdir),
        "--cores",
        "2",
        *args,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
        )
    return result


# A line that changes what a module does (its code version), not only how it reads.
CODE_EDIT = "\n_EDITED_BY_A_TEST = True\n"


@contextlib.contextmanager
def edited(path: Path, addition: str):
    """``path`` with a line appended, restored afterwards with its content and its mtime, so the
    edit leaves no trace for the tests that follow."""
    original, stat = path.read_text(), path.stat()
    path.write_text(original + addition)
    try:
        yield
    finally:
        path.write_text(original)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def planned_jobs(workdir: Path) -> dict[str, int]:
    """Rule -> job count of what a dry run would execute (empty when there is nothing to do)."""
    output = snakemake(workdir, "-n").stdout
    table = re.search(r"Job stats:\n(.*?)\n\n", output + "\n\n", re.S)
    if not table:
        return {}
    counts = {}
    for line in table.group(1).splitlines()[2:]:
        parts = line.split()
        if len(parts) == 2 and parts[0] != "total":
            counts[parts[0]] = int(parts[1])
    return counts


def write_digit_folder(root: Path) -> None:
    """Real digits as PNG files in an ImageFolder tree: the first images of classes 0-2."""
    digits = load_digits()
    for label in range(3):
        for i, index in enumerate(np.flatnonzero(digits.target == label)[:IMAGES_PER_CLASS]):
            path = root / f"digit{label}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((digits.images[index] * 15).astype(np.uint8), mode="L").save(path)


def grid_config(datasets: dict, seeds=(0,)) -> dict:
    return {
        "datasets": datasets,
        "grid": {
            "datasets": list(datasets),
            "fractions": [1.0],
            "backbones": [{"name": "resnet18", "weights": ["none"]}],
            "strategies": ["frozen"],
            "heads": ["linear"],
            "seeds": list(seeds),
        },
        "split": {"val": 0.25, "test": 0.25, "seed": 0},
        "train": {"image_size": 32, "epochs": 1, "batch_size": 16, "augment": "none", "device": "cpu"},
        "resources": {"train_threads": 1, "cache_threads": 1, "train_mem_mb": 1000},
    }


def write_config(workdir: Path, config: dict) -> None:
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, http_server_module):
    workdir = tmp_path_factory.mktemp("grid")
    write_digit_folder(workdir / "photos")
    archive_dir = workdir / "served"
    write_digit_folder(archive_dir / "tree" / "digits_web")
    archive = archive_dir / "digits_web.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted((archive_dir / "tree").rglob("*.png")):
            zf.write(path, path.relative_to(archive_dir / "tree"))
    base_url = http_server_module(archive_dir)
    datasets = {
        "digits": {"source": "builtin", "name": "digits", "max_per_class": IMAGES_PER_CLASS},
        "photos": {"source": "folder", "path": str(workdir / "photos")},
        "web": {"source": "url", "url": f"{base_url}/digits_web.zip", "sha256": sha256_of(archive)},
    }
    config = grid_config(datasets)
    write_config(workdir, config)
    snakemake(workdir)
    return workdir, config


def test_every_source_kind_runs_to_a_report(finished_run):
    workdir, _ = finished_run
    summary = pd.read_csv(workdir / "results" / "summary.csv")
    assert sorted(summary.dataset) == ["digits", "photos", "web"]
    assert {"dataset", "fraction", "backbone", "weights", "strategy", "head", "seed", "test_top1"} <= set(summary)
    assert summary.test_top1.between(0, 1).all()
    classes = {d: json.loads((workdir / f"results/datasets/{d}/classes.json").read_text()) for d in summary.dataset}
    assert classes["digits"]["num_images"] == 10 * IMAGES_PER_CLASS
    assert classes["photos"]["classes"] == ["digit0", "digit1", "digit2"]
    assert classes["web"]["counts"] == {
        "digit0": IMAGES_PER_CLASS,
        "digit1": IMAGES_PER_CLASS,
        "digit2": IMAGES_PER_CLASS,
    }
    cell = workdir / "results/cells/web/1.0/resnet18/none/frozen/linear/seed0"
    assert {"lr1.0", "selection.json", "test.json", "predictions.csv", "confusion.csv"} <= {
        p.name for p in cell.iterdir()
    }
    assert {"model.pt", "history.csv", "train.json", "cell.json"} <= {p.name for p in (cell / "lr1.0").iterdir()}
    html = (workdir / "results/report/index.html").read_text()
    assert "data:image/png;base64," in html and "photos" in html


def test_rerun_has_nothing_to_do(finished_run):
    workdir, _ = finished_run
    assert planned_jobs(workdir) == {}
    assert "Nothing to be done" in snakemake(workdir, "-n").stdout


def test_the_compute_jobs_forked_from_the_fork_server(finished_run):
    workdir, _ = finished_run
    log = (workdir / "results/logs/fork_server.log").read_text()
    # Every compute job of the run (extraction, fitting, evaluation, aggregation, report) but the
    # light data jobs, which do not ask it.
    served = int(re.search(r"stopped; (\d+) jobs served", log).group(1))
    assert served >= 5, log


def test_editing_the_report_code_rerenders_only_the_report(finished_run):
    workdir, _ = finished_run
    with edited(workdir / "workflow" / "transfergrid" / "report" / "figures.py", CODE_EDIT):
        assert planned_jobs(workdir) == {"all": 1, "report": 1}


def test_editing_the_evaluation_code_reevaluates_without_retraining(finished_run):
    workdir, _ = finished_run
    with edited(workdir / "workflow" / "transfergrid" / "metrics.py", CODE_EDIT):
        planned = planned_jobs(workdir)
    # Three frozen cells on cached random bases (one per dataset): evaluation jobs only.
    assert planned == {
        "all": 1,
        "evaluate_frozen_random_digits": 1,
        "evaluate_frozen_random_photos": 1,
        "evaluate_frozen_random_web": 1,
        "aggregate": 1,
        "report": 1,
    }


@pytest.mark.parametrize(
    "module",
    [
        "scripts/fit_frozen.py",  # the rule's script: Snakemake's own code trigger
        "transfergrid/loop.py",  # a package module it computes with: the rule's `code` parameter
    ],
)
def test_editing_the_training_code_retrains_without_extracting_again(finished_run, module):
    workdir, _ = finished_run
    with edited(workdir / "workflow" / module, CODE_EDIT):
        planned = planned_jobs(workdir)
    assert "extract_features" not in planned and "cache_images" not in planned
    for dataset in ("digits", "photos", "web"):
        assert planned[f"fit_frozen_random_{dataset}"] == 1 and planned[f"evaluate_frozen_random_{dataset}"] == 1


def test_editing_one_source_kind_rebuilds_only_its_datasets(finished_run):
    workdir, _ = finished_run
    with edited(workdir / "workflow" / "transfergrid" / "sources" / "folder.py", CODE_EDIT):
        planned = planned_jobs(workdir)
    # photos is a folder, web an archive collected as a folder once extracted; digits is builtin.
    assert planned["obtain_dataset"] == 2 and planned["split_dataset"] == 2
    assert "fit_frozen_random_digits" not in planned and planned["fit_frozen_random_photos"] == 1


def test_a_comment_in_the_package_code_reruns_nothing(finished_run):
    workdir, _ = finished_run
    with edited(workdir / "workflow" / "transfergrid" / "loop.py", "\n# only a comment\n"):
        assert planned_jobs(workdir) == {}


def test_adding_a_seed_runs_only_the_new_cell(finished_run):
    workdir, config = finished_run
    old_model = workdir / "results/cells/digits/1.0/resnet18/none/frozen/linear/seed0/lr1.0/model.pt"
    old_mtime = old_model.stat().st_mtime_ns
    config = {**config, "grid": {**config["grid"], "datasets": ["digits"], "seeds": [0, 1]}}
    write_config(workdir, config)
    # The frozen cell's base is random (weights none) and drawn from its seed, so the new seed gets
    # its own feature extraction; dataset, split and image cache are reused.
    assert planned_jobs(workdir) == {
        "all": 1,
        "extract_features": 1,
        "fit_frozen_random_digits": 1,
        "evaluate_frozen_random_digits": 1,
        "aggregate": 1,
        "report": 1,
    }
    snakemake(workdir)
    assert old_model.stat().st_mtime_ns == old_mtime
    summary = pd.read_csv(workdir / "results" / "summary.csv")
    assert sorted(summary.seed) == [0, 1]


def test_bad_config_stops_before_any_job_with_one_line(tmp_path):
    config = grid_config({"digits": {"source": "builtin", "name": "digits"}})
    config["grid"]["strategies"] = ["frozn"]
    write_config(tmp_path, config)
    result = snakemake(tmp_path, check=False)
    assert result.returncode != 0
    assert "config key 'grid.strategies[0]': unknown strategy 'frozn'; valid names:" in result.stderr + result.stdout
    assert not (tmp_path / "results").exists()


def test_snakemake_lint_passes():
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--lint", "-s", str(ROOT / "Snakefile"), "--directory", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_frozen_heads_share_one_feature_extraction(tmp_path):
    config = grid_config({"digits": {"source": "builtin", "name": "digits", "max_per_class": IMAGES_PER_CLASS}})
    config["grid"].update(strategies=["frozen", "full"], heads=["linear", "mlp", "gap", "svm", "logreg"])
    write_config(tmp_path, config)
    # logreg is fit in closed form on a frozen base only: 5 frozen cells (one fitting and one
    # evaluation job for all of them) + 4 full cells (one training and one evaluation job each:
    # one seed, so each recipe is one cell)
    assert planned_jobs(tmp_path) == {
        "all": 1,
        "obtain_dataset": 1,
        "split_dataset": 1,
        "cache_images": 1,
        "extract_features": 1,
        "fit_frozen_random_digits": 1,
        "evaluate_frozen_random_digits": 1,
        "train_candidate": 4,
        "evaluate_recipe": 4,
        "aggregate": 1,
        "report": 1,
    }
    snakemake(tmp_path)
    summary = pd.read_csv(tmp_path / "results" / "summary.csv")
    assert len(summary) == 9
    fits = {
        (row.strategy, row.head): json.loads((tmp_path / row.candidate_dir / "train.json").read_text())["fit"]
        for row in summary.itertuples()
    }
    assert fits[("frozen", "logreg")] == "fit_head_in_closed_form"
    assert {fits[("frozen", h)] for h in ("linear", "mlp", "gap", "svm")} == {"fit_head_by_sgd"}
    assert {fits[("full", h)] for h in ("linear", "mlp", "gap", "svm")} == {"through_network"}
    # logreg uses no learning rate: it reports the C it chose on validation instead, never the
    # frozen strategy's configured rate.
    logreg = summary[summary["head"] == "logreg"].iloc[0]
    train = json.loads((tmp_path / logreg.candidate_dir / "train.json").read_text())
    assert pd.isna(logreg.lr) and train["C"] == logreg.C
    assert set(train["val_acc_per_C"]) == {"0.001", "0.01", "0.1", "1", "10", "100"}
    assert train["val_acc_per_C"][f"{train['C']:g}"] == max(train["val_acc_per_C"].values())
    assert train["C_at_edge"] == (train["C"] in (0.001, 100.0))
    others = summary[summary["head"] != "logreg"]
    assert others["lr"].notna().all() and others["C"].isna().all()
    leaderboard = (tmp_path / "results" / "leaderboard.md").read_text()
    assert f"C={train['C']:.3g}" in leaderboard
    # A head on cached features costs its fit plus the extraction it shares with its siblings.
    on_features = summary["strategy"] == "frozen"
    assert summary.loc[on_features, "feature_seconds"].nunique() == 1
    assert (summary.loc[on_features, "feature_seconds"] > 0).all()
    assert (summary.loc[~on_features, "feature_seconds"] == 0).all()
    assert np.allclose(summary["cost_seconds"], summary["wall_seconds"] + summary["feature_seconds"])


def planned_priorities(workdir: Path) -> dict[tuple[str, str], int]:
    """(rule, wildcards) -> the priority a dry run shows for each planned job (0 when it shows none)."""
    priorities = {}
    for block in re.split(r"\n(?=\s*rule \w+:)", snakemake(workdir, "-n").stdout):
        rule = re.match(r"\s*rule (\w+):", block)
        if rule:
            wildcards = re.search(r"wildcards: (.*)", block)
            priority = re.search(r"priority: (\d+)", block)
            key = (rule.group(1), wildcards.group(1) if wildcards else "")
            priorities[key] = int(priority.group(1)) if priority else 0
    return priorities


def test_the_longest_jobs_and_what_every_seed_waits_for_are_scheduled_first(tmp_path):
    config = grid_config({"digits": {"source": "builtin", "name": "digits", "max_per_class": IMAGES_PER_CLASS}})
    config["grid"]["backbones"] = [
        {"name": "resnet18", "weights": ["none"]},
        {"name": "efficientnet_lite0", "weights": ["imagenet_pkg"]},
    ]
    write_config(tmp_path, config)
    priorities = planned_priorities(tmp_path)
    by_rule = {(rule, wildcards.split(",")[-1].strip()): p for (rule, wildcards), p in priorities.items()}
    assert by_rule[("similarity", "weights=imagenet_pkg")] == 10
    assert by_rule[("split_dataset", "dataset=digits")] == 1
    assert by_rule[("extract_features", "init=pretrained")] == 1  # every seed's frozen cells read it
    assert by_rule[("extract_features", "init=seed0")] == 0  # a random base serves one seed
    assert by_rule[("fit_frozen_pretrained_digits", "weights=imagenet_pkg")] == 1
    assert by_rule[("fit_frozen_random_digits", "seed=0")] == 0
    assert by_rule[("report", "")] == 0


def test_adding_a_learning_rate_candidate_trains_only_that_candidate(tmp_path):
    config = grid_config({"digits": {"source": "builtin", "name": "digits", "max_per_class": IMAGES_PER_CLASS}})
    config["grid"].update(strategies=["full"])
    write_config(tmp_path, config)
    snakemake(tmp_path)
    config["grid"]["lrs"] = [1.0, 3.0]
    write_config(tmp_path, config)
    assert planned_jobs(tmp_path) == {"all": 1, "train_candidate": 1, "evaluate_recipe": 1, "aggregate": 1, "report": 1}
    snakemake(tmp_path)
    selection = json.loads(
        (tmp_path / "results/cells/digits/1.0/resnet18/none/full/linear/seed0/selection.json").read_text()
    )
    assert [c["candidate"] for c in selection["candidates"]] == ["lr1.0", "lr3.0"]
    assert selection["chosen"] in ("lr1.0", "lr3.0")


def test_a_recipe_is_evaluated_by_one_job_and_a_new_seed_trains_only_that_seed(tmp_path):
    config = grid_config({"digits": {"source": "builtin", "name": "digits", "max_per_class": IMAGES_PER_CLASS}})
    config["grid"].update(strategies=["full"], seeds=[0, 1])
    write_config(tmp_path, config)
    planned = planned_jobs(tmp_path)
    assert (planned["train_candidate"], planned["evaluate_recipe"]) == (2, 1)
    snakemake(tmp_path)
    recipe = tmp_path / "results/cells/digits/1.0/resnet18/none/full/linear"
    model = recipe / "seed0" / "lr1.0" / "model.pt"
    model_mtime = model.stat().st_mtime_ns
    metrics = {seed: json.loads((recipe / f"seed{seed}" / "test.json").read_text()) for seed in (0, 1)}
    config["grid"]["seeds"] = [0, 1, 2]
    write_config(tmp_path, config)
    # The new seed trains; the recipe's evaluation runs again, for its siblings too, to the same numbers.
    assert planned_jobs(tmp_path) == {"all": 1, "train_candidate": 1, "evaluate_recipe": 1, "aggregate": 1, "report": 1}
    snakemake(tmp_path)
    assert model.stat().st_mtime_ns == model_mtime
    for seed in (0, 1):
        again = json.loads((recipe / f"seed{seed}" / "test.json").read_text())
        assert {**again, "inference": None} == {**metrics[seed], "inference": None}
    assert sorted(pd.read_csv(tmp_path / "results" / "summary.csv").seed) == [0, 1, 2]
