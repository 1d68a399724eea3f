# Config validation and the helpers that turn grid coordinates into file names. Everything imported
# here is torch-free, so parsing the workflow stays fast (a test checks it).
import functools
import sys
from pathlib import Path

WORKFLOW_DIR = Path(workflow.current_basedir).parent
sys.path.insert(0, str(WORKFLOW_DIR))  # the transfergrid package, with or without an install

from transfergrid import naming
from transfergrid.config import validate_config
from transfergrid.grid import cell_settings, expand_cells, image_size, pretrain_job
from transfergrid.jobs import export_package_path
from transfergrid.naming import CELL_PATTERN, Cell

# Local files named in the config (`file:` weights) are checked where the workflow starts, not on
# cluster nodes that re-read it to run one job.
validate_config(config, WORKFLOW_DIR / "schemas" / "config.schema.yaml", check_files=not workflow.remote_exec)
export_package_path(WORKFLOW_DIR)

CELLS = expand_cells(config)
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


wildcard_constraints:
    dataset=r"[A-Za-z0-9_][A-Za-z0-9_.-]*",
    fraction=r"[0-9.]+",
    backbone=r"[A-Za-z0-9_.-]+",
    weights=r"[A-Za-z0-9_.-]+",
    strategy=r"[A-Za-z0-9_.:-]+",
    head=r"[A-Za-z0-9_.-]+",
    seed=r"\d+",
    size=r"\d+",


def dataset_spec(wildcards):
    return config["datasets"][wildcards.dataset]


def downloaded_archive(wildcards):
    """The url source's archive, fetched by a head-node rule; other sources need nothing."""
    if dataset_spec(wildcards)["source"] == "url":
        return f"results/downloads/{wildcards.dataset}.archive"
    return []


def weight_source(wildcards):
    """The raw weight source (`pretrain:x`, `file:/a/b.pt`) behind the slug in a path."""
    return naming.weights_from_slug(config, wildcards.backbone, wildcards.weights)


def cell_from(wildcards):
    return Cell(
        wildcards.dataset,
        wildcards.fraction,
        wildcards.backbone,
        weight_source(wildcards),
        wildcards.strategy,
        wildcards.head,
        int(wildcards.seed),
    )


@functools.cache
def settings_of(cell):
    """A cell's resolved settings; several input functions and params of a job ask for them."""
    return cell_settings(config, cell)


def cell_params(wildcards):
    return settings_of(cell_from(wildcards)).to_dict()


def weights_file(wildcards):
    """The cell's starting-weights file, named by the weights slug; none for random init."""
    if naming.weights_need_file(wildcards.weights):
        return naming.weights_path(WEIGHTS_DIR, wildcards.backbone, wildcards.weights)
    return []


def image_cache_path(wildcards):
    size = image_size(config, wildcards.backbone, weight_source(wildcards))
    return naming.image_cache_path(wildcards.dataset, size)


def feature_cache_path(wildcards):
    weights = weight_source(wildcards)
    size = image_size(config, wildcards.backbone, weights)
    return naming.feature_cache_path(wildcards.dataset, size, wildcards.backbone, weights, int(wildcards.seed))


def cell_features(wildcards):
    return feature_cache_path(wildcards) if settings_of(cell_from(wildcards)).features else []


def cell_files(name):
    """One file of every cell of the grid."""
    return [f"{cell.path}/{name}" for cell in CELLS]


def package_source(module):
    """A package module to list among the inputs of the job that uses it, so that editing it
    reruns that job (and what follows) only."""
    return str(WORKFLOW_DIR / "transfergrid" / module)


def imported_checkpoint(wildcards):
    """The local checkpoint behind a `file-<key>` weights file."""
    return naming.file_source(config, f"file-{wildcards.key}")


def pretrain_params(wildcards):
    """The resolved settings of a `pretrain:<name>` source for one backbone (a rule parameter)."""
    return pretrain_job(config, wildcards.backbone, wildcards.name).to_dict()


def pretrain_inputs(wildcards):
    """Image cache, split and class list of the pretraining source dataset."""
    settings = pretrain_job(config, wildcards.backbone, wildcards.name).settings
    return {
        "cache": naming.image_cache_path(settings.dataset, settings.image_size),
        "split": f"results/datasets/{settings.dataset}/split.csv",
        "classes": f"results/datasets/{settings.dataset}/classes.json",
    }
