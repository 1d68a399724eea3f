# Config validation and the helpers that turn grid coordinates into file names.
import functools
import sys
from pathlib import Path

WORKFLOW_DIR = Path(workflow.current_basedir).parent
sys.path.insert(0, str(WORKFLOW_DIR))  # the transfergrid package, with or without an install

from transfergrid.backbones import weights_need_file
from transfergrid.jobs import export_package_path
from transfergrid.weights import weights_from_slug, weights_slug
from transfergrid.config import validate_config
from transfergrid.grid import CELL_PATTERN, Cell, cell_config, expand_cells, image_size

# Local files named in the config (`file:` weights) are checked where the workflow starts, not on
# cluster nodes that re-read it to run one job.
validate_config(config, WORKFLOW_DIR / "schemas" / "config.schema.yaml", check_files=not workflow.remote_exec)
export_package_path(WORKFLOW_DIR)

CELLS = expand_cells(config)
LOGS = "results/logs"
WEIGHTS_DIR = config["weights_dir"]


wildcard_constraints:
    dataset=r"[A-Za-z0-9_.-]+",
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
    return weights_from_slug(config, wildcards.backbone, wildcards.weights)


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
def cell_settings(cell):
    """A cell's resolved settings; several input functions and params of a job ask for them."""
    return cell_config(config, cell)


def cell_params(wildcards):
    return cell_settings(cell_from(wildcards))


def weights_file(wildcards):
    """The cell's starting-weights file, named by the weights slug; none for random init."""
    slug = weights_slug(wildcards.weights)
    if weights_need_file(slug):
        return f"{WEIGHTS_DIR}/{wildcards.backbone}/{slug}.pt"
    return []


def image_cache_path(wildcards):
    size = image_size(config, wildcards.backbone, weight_source(wildcards))
    return f"results/cache/{wildcards.dataset}/{size}px.pt"


def feature_cache_path(wildcards):
    """Pretrained bases are shared by every seed; a random base is drawn from the cell's seed."""
    weights = weight_source(wildcards)
    size = image_size(config, wildcards.backbone, weights)
    init = "pretrained" if weights_need_file(weights) else f"seed{wildcards.seed}"
    return f"results/features/{wildcards.dataset}/{size}px/{wildcards.backbone}/{wildcards.weights}/{init}.pt"


def cell_features(wildcards):
    return feature_cache_path(wildcards) if cell_params(wildcards)["features"] else []


def cell_files(name):
    """One file of every cell of the grid."""
    return [f"{cell.path}/{name}" for cell in CELLS]


def gpus_per_job():
    return 1 if config["train"]["device"] == "cuda" else 0


def package_source(module):
    """A package module to list among the inputs of the job that uses it, so that editing it
    reruns that job (and what follows) only."""
    return str(WORKFLOW_DIR / "transfergrid" / module)


def imported_checkpoint(wildcards):
    """The local checkpoint behind a `file-<key>` weights file."""
    from transfergrid.weights import file_source

    return file_source(config, f"file-{wildcards.key}")


def pretrain_job(wildcards):
    """The resolved settings of a `pretrain:<name>` source for one backbone (a rule parameter)."""
    from transfergrid.weights import pretrain_job_config

    return pretrain_job_config(config, wildcards.backbone, wildcards.name)


def pretrain_inputs(wildcards):
    """Image cache, split and class list of the pretraining source dataset."""
    job = pretrain_job(wildcards)
    dataset = job["dataset"]
    return {
        "cache": f"results/cache/{dataset}/{job['image_size']}px.pt",
        "split": f"results/datasets/{dataset}/split.csv",
        "classes": f"results/datasets/{dataset}/classes.json",
    }
