# Config validation and the helpers that turn grid coordinates into file names. Everything imported
# here is torch-free, so parsing the workflow stays fast (a test checks it).
import argparse
import atexit
import functools
import gc
import re
import sys
from pathlib import Path

WORKFLOW_DIR = Path(workflow.current_basedir).parent
sys.path.insert(0, str(WORKFLOW_DIR))  # the transfergrid package, with or without an install

from transfergrid import codeversion, naming
from transfergrid.config import one_line_config_errors
from transfergrid.grid import (
    candidate_settings,
    cell_settings,
    feature_heads,
    frozen_group_cells,
    frozen_group_files,
    image_size,
    lr_candidates,
    prepare_config,
    pretrain_job,
)
from transfergrid.failures import print_failures
from transfergrid.forkserver import fork_server_in_reach, jobs_may_use_cuda, start_fork_server, stop_fork_server
from transfergrid.jobs import export_package_path
from transfergrid.naming import CANDIDATE_PATTERN, CELL_PATTERN, RECIPE_PATTERN, Cell

# A bad config is one line on stderr (`transfergrid: config key '...': ...`) and exit status 1,
# before any job and before results/ exists. Local files and folders named in the config are
# checked where the workflow starts, not on cluster nodes that re-read it to run one job; nor do
# those (or local subprocess jobs) repeat the notes on left-out combinations.
with one_line_config_errors():
    CELLS = prepare_config(
        config,
        WORKFLOW_DIR / "schemas" / "config.schema.yaml",
        check_files=not workflow.remote_exec,
        notes=not (workflow.remote_exec or workflow.subprocess_exec),
    )
export_package_path(WORKFLOW_DIR)

# Snakemake plans a grid with millions of small objects. With Python's default thresholds (700,
# 10, 10) the cyclic garbage collector ran so often that it took a sixth of `snakemake -n` on
# 10,164 cells. Fewer, larger collections in the Snakemake process; jobs run in processes of
# their own (script subprocesses, the fork server), with the defaults.
gc.set_threshold(50_000, 20, 20)

FEATURE_HEADS = feature_heads(config)
# The strategy wildcard of the network rules (training, evaluation): every strategy but the frozen
# cells that frozen.smk fits on cached features, refused by a lookahead over the head that follows.
# So no two rules write the same file, and Snakemake does not plan a network job for each frozen
# cell only to drop it (a ruleorder would).
STRATEGY_NAME = r"[A-Za-z0-9_.:-]+"
NETWORK_STRATEGY = (
    rf"(?!frozen/(?:{'|'.join(map(re.escape, FEATURE_HEADS))})/){STRATEGY_NAME}" if FEATURE_HEADS else STRATEGY_NAME
)
CANDIDATE_FILES = ("model.pt", "history.csv", "train.json", "cell.json")
RESULT_FILES = ("test.json", "selection.json", "predictions.csv", "confusion.csv")
# Every recipe has every seed of the grid (no left-out combination depends on the seed).
SEEDS = tuple(config["grid"]["seeds"])
LOGS = "results/logs"
WEIGHTS_DIR = config["weights_dir"]
# Scheduler resources of every compute job (training, features, evaluation, pretraining): one GPU
# each when the device is CUDA, so `--resources gpu=N` bounds concurrent GPU jobs.
COMPUTE_RESOURCES = {
    "mem_mb": config["resources"]["train_mem_mb"],
    "runtime": config["resources"]["train_runtime"],
    "gpu": 1 if config["train"]["device"] == "cuda" else 0,
}
COMPUTE_THREADS = config["resources"]["train_threads"]


# A local CPU run's compute jobs fork from one server that imported torch once (forkserver.py), and
# so do the jobs of a cluster job group, from a server inside the group's allocation. Other cluster
# jobs, nested Snakemake processes and jobs that may use CUDA run as fresh processes.
FORK_SERVER = []


def fork_server_wanted():
    return config["resources"]["fork_server"] and not jobs_may_use_cuda(config["train"]["device"])


onstart:
    if workflow.is_main_process and workflow.local_exec and fork_server_wanted():
        FORK_SERVER.append(start_fork_server(f"{LOGS}/fork_server.log"))


def start_group_fork_server():
    """In the Snakemake process that runs a cluster job group inside the group's allocation: start
    a fork server there when the group has compute jobs, and stop it when the process exits.

    That process starts the group's jobs as Snakemake processes of their own (under SLURM, each in
    an `srun` step, or all of them in one), and their scripts fork from its server instead of each
    importing torch. It runs without hooks, so it starts the server while it parses (the Snakefile
    calls this after the last rule). Snakemake fills in workflow.group_settings only after parsing:
    the group comes from the `--local-groupid` and `--allowed-rules` on the process's command line.
    Nested Snakemake processes of the same group see the server in their environment and start none.
    """
    if not workflow.remote_exec:
        return
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--local-groupid", default="local")
    parser.add_argument("--allowed-rules", nargs="*", default=[])
    args = parser.parse_known_args(sys.argv[1:])[0]
    # Compute rules are the ones with COMPUTE_RESOURCES (a `gpu` resource); data rules do not fork.
    has_compute_jobs = any("gpu" in workflow.get_rule(name).resources for name in args.allowed_rules)
    # The command line first: every cluster job's own Snakemake processes parse the workflow, and
    # fork_server_wanted() may ask nvidia-smi (train.device auto).
    if args.local_groupid == "local" or not has_compute_jobs:
        return
    if not fork_server_wanted() or fork_server_in_reach():
        return
    server = start_fork_server(f"{LOGS}/fork_server/group_{args.local_groupid}.log")
    FORK_SERVER.append(server)
    atexit.register(stop_fork_server, server)


onsuccess:
    stop_fork_server(FORK_SERVER.pop() if FORK_SERVER else None)


onerror:
    stop_fork_server(FORK_SERVER.pop() if FORK_SERVER else None)
    # After a failed run (with --keep-going, after every job that could run), one line per failure.
    print_failures(log)


wildcard_constraints:
    dataset=r"[A-Za-z0-9_][A-Za-z0-9_.-]*",
    lr=r"[0-9.e+-]+",
    fraction=r"[0-9.]+",
    backbone=r"[A-Za-z0-9_.-]+",
    weights=r"[A-Za-z0-9_.-]+",
    strategy=STRATEGY_NAME,
    head=r"[A-Za-z0-9_.-]+",
    seed=r"\d+",
    size=r"\d+",


def dataset_spec(wildcards):
    return config["datasets"][wildcards.dataset]


# What a dataset of each source kind is built with (transfergrid/sources, where SOURCE_COLLECTORS
# names each kind's collector) besides the modules every kind shares: editing one module rebuilds
# the datasets of its kinds only.
SOURCE_CODE = {
    "builtin": ("sources/builtin.py", "sources/memory.py"),
    "folder": ("sources/folder.py",),
    "url": ("sources/archive.py", "sources/folder.py", "archives.py"),
    "torchvision": ("sources/torchvision_datasets.py", "sources/memory.py"),
}


def dataset_code(wildcards):
    shared = ("sources/__init__.py", "sources/common.py", "sources/checks.py")
    return code_version(*shared, *SOURCE_CODE[dataset_spec(wildcards)["source"]])


def downloaded_archive(wildcards):
    """The url source's archive, fetched by a head-node rule; other sources need nothing."""
    if dataset_spec(wildcards)["source"] == "url":
        return f"results/downloads/{wildcards.dataset}.archive"
    return []


# The helpers below run for every job of the DAG (tens of thousands on a large grid), so what
# depends only on grid coordinates is computed once per coordinate and cached; the config does
# not change once validated.


@functools.cache
def source_of_slug(backbone, slug):
    return naming.weights_from_slug(config, backbone, slug)


def weight_source(wildcards):
    """The raw weight source (`pretrain:x`, `file:/a/b.pt`) behind the slug in a path."""
    return source_of_slug(wildcards.backbone, wildcards.weights)


@functools.cache
def cell_at(dataset, fraction, backbone, slug, strategy, head, seed):
    return Cell(dataset, fraction, backbone, source_of_slug(backbone, slug), strategy, head, int(seed))


def cell_from(wildcards, seed=None):
    """The cell in ``wildcards``, or its sibling of ``seed`` (wildcards of a recipe have no seed)."""
    return cell_at(
        wildcards.dataset,
        wildcards.fraction,
        wildcards.backbone,
        wildcards.weights,
        wildcards.strategy,
        wildcards.head,
        wildcards.seed if seed is None else seed,
    )


@functools.cache
def candidate_dirs(cell):
    """The directory of every learning-rate candidate of ``cell``."""
    return tuple(cell.candidate_path(lr) for lr in lr_candidates(config, cell.head))


@functools.cache
def settings_of(cell):
    """A cell's resolved settings; several input functions and params of a job ask for them."""
    return cell_settings(config, cell)


def candidate_params(wildcards):
    """The settings of one learning-rate candidate (a parameter of its job, so changing them retrains it)."""
    return candidate_settings(settings_of(cell_from(wildcards)), wildcards.lr).to_dict()


def recipe_summaries(wildcards):
    """The train.json of every learning-rate candidate of every seed of the recipe in ``wildcards``,
    seed by seed."""
    return [f"{path}/train.json" for seed in SEEDS for path in candidate_dirs(cell_from(wildcards, seed))]


def recipe_outputs():
    """The result files of every seed of a recipe, written by its one evaluation job."""
    return [f"{RECIPE_PATTERN}/seed{seed}/{name}" for seed in SEEDS for name in RESULT_FILES]


def weights_file(wildcards):
    """The cell's starting-weights file, named by the weights slug; none for random init."""
    if naming.weights_need_file(wildcards.weights):
        return naming.weights_path(WEIGHTS_DIR, wildcards.backbone, wildcards.weights)
    return []


def candidate_inputs(wildcards):
    """A training job's inputs, from one function: Snakemake inspects and calls every input
    function of every job while it plans the grid."""
    return {
        "cache": image_cache_path(wildcards),
        "split": f"results/datasets/{wildcards.dataset}/split.csv",
        "classes": f"results/datasets/{wildcards.dataset}/classes.json",
        "weights": weights_file(wildcards),
    }


@functools.cache
def input_size(backbone, weights):
    return image_size(config, backbone, weights)


def image_cache_path(wildcards):
    size = input_size(wildcards.backbone, weight_source(wildcards))
    return naming.image_cache_path(wildcards.dataset, size)


@functools.cache
def frozen_group(dataset, backbone, slug, seed):
    """One scan of the grid per feature cache, whichever of its jobs' helpers asks first."""
    return tuple(frozen_group_cells(config, CELLS, dataset, backbone, slug, seed))


def group_cells(wildcards, dataset):
    """The frozen feature cells of the feature cache of ``dataset`` in ``wildcards`` (see frozen.smk)."""
    seed = int(wildcards.seed) if "seed" in wildcards.keys() else None
    weights = wildcards.weights if "weights" in wildcards.keys() else "none"
    return list(frozen_group(dataset, wildcards.backbone, weights, seed))


def group_feature_cache(wildcards, dataset):
    cell = group_cells(wildcards, dataset)[0]
    size = input_size(cell.backbone, cell.weights)
    return naming.feature_cache_path(cell.dataset, size, cell.backbone, cell.weights, cell.seed)


def frozen_outputs(dataset, random_base, per_candidate):
    """Every file one frozen-heads job of ``dataset`` writes: its candidates' files or its cells' results."""
    names = CANDIDATE_FILES if per_candidate else RESULT_FILES
    return [path for name in names for path in frozen_group_files(config, dataset, name, random_base, per_candidate)]


def frozen_inputs(wildcards, dataset):
    return {
        "features": group_feature_cache(wildcards, dataset),
        "split": f"results/datasets/{dataset}/split.csv",
        "classes": f"results/datasets/{dataset}/classes.json",
    }


def frozen_candidates(wildcards, dataset):
    """Settings and directory of every candidate the fitting job writes (a parameter of the job)."""
    return [
        {
            "settings": candidate_settings(settings_of(cell), lr).to_dict(),
            "out_dir": cell.candidate_path(lr),
            # Recorded in the head-only model.pt, which rebuilds its frozen base from it.
            "weights_file": (
                naming.weights_path(WEIGHTS_DIR, cell.backbone, cell.weights)
                if naming.weights_need_file(cell.weights)
                else None
            ),
        }
        for cell in group_cells(wildcards, dataset)
        for lr in lr_candidates(config, cell.head)
    ]


def frozen_cell_candidates(wildcards, dataset):
    return [
        {"cell_dir": cell.path, "candidates": list(candidate_dirs(cell))} for cell in group_cells(wildcards, dataset)
    ]


def frozen_evaluation_inputs(wildcards, dataset):
    # The out_dir of every entry of frozen_candidates, without resolving their settings; every one
    # of them, so that a new candidate's fitting is asked for (see cell_results).
    candidates = [path for cell in group_cells(wildcards, dataset) for path in candidate_dirs(cell)]
    return {
        "features": group_feature_cache(wildcards, dataset),
        "split": f"results/datasets/{dataset}/split.csv",
        "summaries": [f"{path}/train.json" for path in candidates],
    }


def similarity_features(wildcards):
    """The pretrained feature cache a similarity is measured on."""
    weights = weight_source(wildcards)
    size = input_size(wildcards.backbone, weights)
    return naming.feature_cache_path(wildcards.dataset, size, wildcards.backbone, weights, 0)


def similarity_files():
    """One similarity per dataset and pretrained (backbone, weights) of the grid."""
    pairs = dict.fromkeys((c.dataset, c.backbone, naming.weights_slug(c.weights)) for c in CELLS if c.weights != "none")
    return [f"results/similarity/{dataset}/{backbone}/{weights}.json" for dataset, backbone, weights in pairs]


def image_cache_files():
    """The image cache of every dataset and input size of the grid (the report shows test images)."""
    sizes = dict.fromkeys((c.dataset, input_size(c.backbone, c.weights)) for c in CELLS)
    return [naming.image_cache_path(dataset, size) for dataset, size in sizes]


def report_code():
    """The report's modules and template, and the quadrant rule it tests."""
    package = WORKFLOW_DIR / "transfergrid"
    report_files = [*package.glob("report/*.py"), *package.glob("report/templates/*")]
    return code_version("quadrant.py", *(str(path.relative_to(package)) for path in sorted(report_files)))


@functools.cache
def cell_paths():
    return tuple(cell.path for cell in CELLS)


def cell_results():
    """One file per cell that stands for all of its results: test.json, selection.json,
    predictions.csv and confusion.csv are written together by one evaluation job. Snakemake looks
    up the producer of every input file, so one input per cell instead of five (evaluation jobs
    likewise one per candidate, the report none) took `snakemake -n` on 10,164 cells from 62.8 s
    to 46.7 s. One per evaluation job would not do: Snakemake reruns a job for its missing
    outputs only when another job asks for them, so a new seed's results would never be made."""
    return [f"{path}/test.json" for path in cell_paths()]


# The package modules that compute a stage's results, without the registries (codeversion.py).
# Their digest is the parameter `code` of the stage's jobs, so editing one of them reruns those
# jobs and what follows from them, and nothing else. What a training job computes with:
TRAINING_CODE = ("loop.py", "optim.py", "batches.py", "checkpoint.py", "model.py", "runtime.py")


@functools.cache
def code_version(*modules):
    """The digest of these files of the package (paths relative to it)."""
    return codeversion.code_version(WORKFLOW_DIR / "transfergrid", modules)


def imported_checkpoint(wildcards):
    """The local checkpoint behind a `file-<key>` weights file."""
    return naming.file_source(config, f"file-{wildcards.key}")


def pretrain_params(wildcards):
    """The resolved settings of a `pretrain:<name>` source for one backbone (a parameter of the job)."""
    return pretrain_job(config, wildcards.backbone, wildcards.name).to_dict()


def pretrain_inputs(wildcards):
    """Image cache, split and class list of the pretraining source dataset."""
    settings = pretrain_job(config, wildcards.backbone, wildcards.name).settings
    return {
        "cache": naming.image_cache_path(settings.dataset, settings.image_size),
        "split": f"results/datasets/{settings.dataset}/split.csv",
        "classes": f"results/datasets/{settings.dataset}/classes.json",
    }
