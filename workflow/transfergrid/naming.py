"""Names of things on disk, without torch: weight sources as path segments, cells and their paths.

Snakemake imports this module while it parses the workflow, so it stays free of torch, timm and
torchvision (a test checks it).
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

# Weight sources every backbone accepts. Parametrised sources carry their argument after a colon.
SCRATCH = "none"
HUB = "imagenet"
PACKAGED = "imagenet_pkg"
FILE_PREFIX = "file:"
PRETRAIN_PREFIX = "pretrain:"
FETCHED = (HUB, PACKAGED)  # sources fetched by name on the head node
FILE_SLUG = "file-"
PRETRAIN_SLUG = "pretrain-"
# Dataset, pretrain and other user-chosen names become path segments: nothing else is allowed.
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")

CELLS_ROOT = "results/cells"
# A recipe: the cells that differ only by seed (evaluated by one job, summarised over seeds).
RECIPE_PATTERN = CELLS_ROOT + "/{dataset}/{fraction}/{backbone}/{weights}/{strategy}/{head}"
CELL_PATTERN = RECIPE_PATTERN + "/seed{seed}"
# One directory per learning-rate candidate inside a cell (``lr1.0`` for the configured rate), so
# adding a candidate trains only that candidate.
CANDIDATE_DIR = "lr{lr}"
CANDIDATE_PATTERN = CELL_PATTERN + "/" + CANDIDATE_DIR


def is_safe_name(name: str) -> bool:
    """A name that is one path segment and cannot climb out of its folder (``..``, ``.x``, ``a/b``)."""
    return bool(SAFE_NAME.fullmatch(name))


def format_fraction(fraction: float) -> str:
    """1 -> '1.0', 0.25 -> '0.25': one spelling per value, so paths are stable."""
    return repr(float(fraction))


format_multiplier = format_fraction  # learning-rate multipliers are spelled the same way


@functools.cache  # pure; Snakemake asks for the slugs of the same few sources for every job
def weights_slug(weights: str) -> str:
    """``weights`` as one readable, path-safe segment (cell directories, weight file names).

    ``none``/``imagenet``/``imagenet_pkg`` stay as they are; ``pretrain:<name>`` becomes
    ``pretrain-<name>``; ``file:<path>`` becomes ``file-<stem>-<sha1 of the path>[:12]``. Slugs
    never contain ``:`` or ``/``, and a slug's slug is itself.
    """
    if weights.startswith(FILE_PREFIX):
        path = weights[len(FILE_PREFIX) :]
        stem = re.sub(r"[^A-Za-z0-9_]+", "_", Path(path).stem).strip("_")[:40] or "checkpoint"
        return f"{FILE_SLUG}{stem}-{hashlib.sha1(path.encode()).hexdigest()[:12]}"
    if weights.startswith(PRETRAIN_PREFIX):
        return PRETRAIN_SLUG + weights[len(PRETRAIN_PREFIX) :]
    return weights


def weights_need_file(weights: str) -> bool:
    """Whether a head-node rule must materialise a weights file before training."""
    return weights != SCRATCH


def grid_weight_sources(config: dict, backbone: str | None = None) -> list[str]:
    """Every weight source listed in the grid (of one backbone when given), in order."""
    sources = [
        w for entry in config["grid"]["backbones"] if backbone in (None, entry["name"]) for w in entry["weights"]
    ]
    return list(dict.fromkeys(sources))


def weights_from_slug(config: dict, backbone: str, slug: str) -> str:
    """The grid's weight source of ``backbone`` whose slug is ``slug`` (the inverse of weights_slug)."""
    from .errors import ConfigError

    for weights in grid_weight_sources(config, backbone):
        if weights_slug(weights) == slug:
            return weights
    if slug.startswith(PRETRAIN_SLUG):
        return PRETRAIN_PREFIX + slug[len(PRETRAIN_SLUG) :]
    if slug.startswith(FILE_SLUG):
        raise ConfigError(f"weights {slug!r} of backbone {backbone!r} matches no file: source in grid.backbones")
    return slug


def file_source(config: dict, slug: str) -> str:
    """The checkpoint path of the grid's ``file:`` source whose slug is ``slug``."""
    from .errors import ConfigError

    for weights in grid_weight_sources(config):
        if weights.startswith(FILE_PREFIX) and weights_slug(weights) == slug:
            return weights[len(FILE_PREFIX) :]
    raise ConfigError(f"weights {slug!r} matches no file: source in grid.backbones")


@dataclass(frozen=True)
class Cell:
    """The coordinates of one grid cell: what a user varies. Its settings are a CellSettings."""

    dataset: str
    fraction: str  # as spelled by format_fraction
    backbone: str
    weights: str  # the weight source as configured (``file:/a/b.pt``), not its slug
    strategy: str
    head: str
    seed: int

    @property
    def path(self) -> str:
        return CELL_PATTERN.format(
            dataset=self.dataset,
            fraction=self.fraction,
            backbone=self.backbone,
            weights=weights_slug(self.weights),
            strategy=self.strategy,
            head=self.head,
            seed=self.seed,
        )

    def candidate_path(self, multiplier: str) -> str:
        return f"{self.path}/{CANDIDATE_DIR.format(lr=multiplier)}"


def checkpoint_path(job_dir: str | Path) -> str:
    """Where a training job (a candidate directory under results/cells/, or ``pretrain/<backbone>/
    <name>``) checkpoints every epoch: under results/checkpoints/, never one of its outputs, so that
    Snakemake does not delete it with a failed job's outputs."""
    return f"results/checkpoints/{Path(job_dir).as_posix().removeprefix(CELLS_ROOT + '/')}.pt"


def weights_path(weights_dir: str, backbone: str, weights: str) -> str:
    """Where a head-node rule puts the starting weights of ``backbone``."""
    return f"{weights_dir}/{backbone}/{weights_slug(weights)}.pt"


def image_cache_path(dataset: str, size: int) -> str:
    return f"results/cache/{dataset}/{size}px.npy"


def feature_init(weights: str, seed: int) -> str:
    """Pretrained bases are shared by every seed; a random base is drawn from the cell's seed."""
    return "pretrained" if weights_need_file(weights) else f"seed{seed}"


def feature_cache_path(dataset: str, size: int, backbone: str, weights: str, seed: int) -> str:
    return f"results/features/{dataset}/{size}px/{backbone}/{weights_slug(weights)}/{feature_init(weights, seed)}.pt"
