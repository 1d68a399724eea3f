"""``pretrain:<name>`` weights: model A trained from scratch on a source dataset (or a class subset
of it), whose backbone starts model B's cells. A compute job with the ordinary training loop; the
epoch is chosen on the source's validation split."""

from __future__ import annotations

from pathlib import Path

import torch

from .backbones import resolve_backbone
from .batches import make_batches
from .checkpoint import Checkpoint
from .errors import DataError
from .imagecache import load_cache
from .io import read_json
from .loop import fit
from .model import build_model
from .naming import PRETRAIN_PREFIX
from .runtime import prepare_job, prepare_model, resolve_precision
from .settings import PretrainJob
from .split import fraction_rows, read_split, split_rows
from .strategies import parse_strategy
from .weights import save_weights


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
    job: PretrainJob,
    cache: Path,
    split_csv: Path,
    classes_json: Path,
    out_path: Path,
    threads: int = 1,
    log=print,
    checkpoint_path: Path | None = None,
    code_version: str = "",
) -> dict:
    """Train the backbone from scratch on the source dataset's train split (class subset if given,
    labels renumbered), choose the epoch on its val split, and save the backbone's state. The
    checkpoint resumes only into the same settings and code version."""
    settings = job.settings
    device = prepare_job(threads, settings.device, settings.seed, settings.cudnn_benchmark)
    names = read_json(classes_json)["classes"]
    keep = select_classes(names, job.classes, f"config key 'pretrain.{job.name}.classes'")
    images, labels = load_cache(cache)
    remap = torch.full((len(names),), -1, dtype=torch.long)
    remap[torch.tensor(keep)] = torch.arange(len(keep))
    labels = remap[labels]
    split = read_split(split_csv)
    split = split[split["label"].isin(keep)]
    train_rows, val_rows = fraction_rows(split, settings.fraction), split_rows(split, "val")
    if not len(val_rows):
        raise DataError(
            f"pretrain {job.name!r}: dataset {settings.dataset!r} has no validation image in the chosen classes"
        )
    kept = [names[i] for i in keep]
    precision = resolve_precision(settings.precision, device)
    log(
        f"pretrain {job.name!r}: {settings.backbone} on {settings.dataset} classes {kept}; "
        f"device {device}, precision {precision}; {len(train_rows)} train / {len(val_rows)} val images"
    )

    model = build_model(settings, len(keep), None).to(device)
    prepare_model(model, precision, device)
    checkpoint = Checkpoint(Path(checkpoint_path), job.to_dict(), code_version) if checkpoint_path else None
    train_batches = make_batches(settings, images, labels, train_rows, device, True)
    result = fit(
        model,
        parse_strategy("full"),
        train_batches,
        make_batches(settings, images, labels, val_rows, device, False),
        settings,
        log,
        checkpoint,
        statistics_batches=train_batches.in_row_order(),
    )
    model.load_state_dict(result.best_state)
    state = {k: v.detach().cpu().clone() for k, v in model.backbone.net.state_dict().items()}
    info = {
        "dataset": settings.dataset,
        "classes": kept,
        "best_epoch": result.best_epoch,
        "best_val_acc": result.best_val_acc,
        "best_val_loss": result.best_val_loss,
        "epochs_run": len(result.history),
        "num_train": len(train_rows),
        "num_val": len(val_rows),
        "image_size": settings.image_size,
    }
    log(f"pretrained: {info}")
    save_weights(
        out_path,
        {
            "state_dict": state,
            "backbone": settings.backbone,
            "arch": resolve_backbone(settings.backbone).arch,
            "weights": PRETRAIN_PREFIX + job.name,
            "pretrain": info,
        },
    )
    if checkpoint is not None:
        checkpoint.remove()
    return info
