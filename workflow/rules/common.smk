# Config validation and the helpers that turn grid coordinates into file names.
import sys
from pathlib import Path

WORKFLOW_DIR = Path(workflow.current_basedir).parent
sys.path.insert(0, str(WORKFLOW_DIR))  # the transfergrid package, with or without an install

from transfergrid.backbones import weights_need_file
from transfergrid.jobs import export_package_path
from transfergrid.config import validate_config
from transfergrid.grid import CELL_PATTERN, Cell, cell_config, expand_cells, image_size

validate_config(config, WORKFLOW_DIR / "schemas" / "config.schema.yaml")
export_package_path(WORKFLOW_DIR)

CELLS = expand_cells(config)
LOGS = "results/logs"
WEIGHTS_DIR = config["weights_dir"]


wildcard_constraints:
    dataset=r"[A-Za-z0-9_.-]+",
    fraction=r"[0-9.]+",
    backbone=r"[A-Za-z0-9_.-]+",
    seed=r"\d+",
    size=r"\d+",


def dataset_spec(wildcards):
    return config["datasets"][wildcards.dataset]


def downloaded_archive(wildcards):
    """The url source's archive, fetched by a head-node rule; other sources need nothing."""
    if dataset_spec(wildcards)["source"] == "url":
        return f"results/downloads/{wildcards.dataset}.archive"
    return []


def cell_from(wildcards):
    return Cell(wildcards.dataset, wildcards.fraction, wildcards.backbone, wildcards.weights,
                wildcards.strategy, wildcards.head, int(wildcards.seed))


def cell_params(wildcards):
    return cell_config(config, cell_from(wildcards))


def weights_file(wildcards):
    if weights_need_file(wildcards.weights):
        return f"{WEIGHTS_DIR}/{wildcards.backbone}/{wildcards.weights}.pt"
    return []


def image_cache(wildcards):
    size = image_size(config, wildcards.backbone, wildcards.weights)
    return f"results/cache/{wildcards.dataset}/{size}px.pt"


def cell_files(name):
    """One file of every cell of the grid."""
    return [f"{cell.path}/{name}" for cell in CELLS]


def gpus_per_job():
    return 1 if config["train"]["device"] == "cuda" else 0


def package_source(module):
    """A package module to list among the inputs of the job that uses it, so that editing it
    reruns that job (and what follows) only."""
    return str(WORKFLOW_DIR / "transfergrid" / module)
