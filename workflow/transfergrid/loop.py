"""The training loop, readable top to bottom: epochs of train + validate, the best epoch kept.

The test split never reaches this module: model selection (best epoch) uses validation only.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass

import torch
from torch import nn

from .checkpoint import Checkpoint, failpoint, random_states, restore_random_states
from .errors import DivergedError
from .heads import make_loss
from .model import AUX_LOSS_WEIGHT
from .optim import build_optimizer, lr_factor, set_learning_rate
from .runtime import autocast, resolve_precision
from .settings import CellSettings
from .strategies import Phase, Strategy

Log = Callable[[str], None]
Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
# Training has diverged when its epoch loss is not finite, or is this many times the loss of
# uniform predictions (all-zero scores: ln C for cross-entropy, (C-1)/C for the hinge).
# A model that learns nothing stays near 1x; the diverging runs measured here reached 1e8x.
DIVERGENCE_LOSS_RATIO = 100.0
# BatchNorm's running averages (momentum 0.1) forget their starting values by 0.9 per step: after
# 50 steps those weigh 0.5 %. Until then validation runs on statistics that still hold the
# pretrained source's, so `precise_bn: auto` recomputes them (`recompute_batch_norm_statistics`).
PRECISE_BN_AUTO_STEPS = 50


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def train_one_epoch(
    model: nn.Module,
    batches: Batches,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    precision: str = "fp32",
    epoch: int = 0,
) -> tuple[float, float, int, int]:
    """(mean training loss, training accuracy, number of class scores, optimizer steps) of one epoch."""
    model.train()
    device = model_device(model)
    # Summed on the device and read once per epoch: a `.item()` per step would make the host wait
    # for the GPU at every step instead of queueing the next one.
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = steps = 0
    for images, labels in batches:
        with autocast(precision, device):
            outputs = model(images)
        logits = (outputs[0] if isinstance(outputs, tuple) else outputs).float()
        loss = loss_fn(logits, labels)
        if isinstance(outputs, tuple):  # auxiliary logits count in the training loss only
            loss = loss + AUX_LOSS_WEIGHT * loss_fn(outputs[1].float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.detach().double() * len(labels)
        correct += (logits.argmax(1) == labels).sum()
        seen += len(labels)
        steps += 1
        failpoint("mid_epoch", epoch)
    return total_loss.item() / seen, correct.item() / seen, logits.shape[1], steps


def training_batch_norms(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers, by name, that update running statistics when ``model`` is in training
    mode (those inside frozen parts stay in eval mode unless ``train_bn``); leaves it in that mode."""
    model.train()
    norms = ((n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    return {name: m for name, m in norms if m.training and m.track_running_stats}


@torch.no_grad()
def recompute_batch_norm_statistics(model: nn.Module, batches: Batches, precision: str = "fp32") -> int:
    """PreciseBN (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021): the running mean and
    variance of every BatchNorm that trains, replaced by their average over ``batches`` (the
    training rows, unaugmented) under the current weights, each batch weighted by its size.
    Returns the number of layers updated.

    Why: validation and test run on running averages. After a short epoch those still carry the
    pretrained source's statistics or those of much older weights, and a network that fits its
    training batches well predicts near chance in eval mode (measured: Fashion-MNIST, 8 images per
    class, full fine-tuning, 15 steps: training accuracy 0.78 in train mode, 0.16-0.35 in eval mode).
    Only the BatchNorm layers are in training mode during the pass: dropout and stochastic depth
    stay off, as at evaluation, and no random number is drawn.
    """
    norms = list(training_batch_norms(model).values())
    model.eval()
    if not norms:
        return 0
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in norms]
    sums = [(torch.zeros_like(m.running_mean), torch.zeros_like(m.running_var)) for m in norms]
    seen = 0
    device = model_device(model)
    for m in norms:
        m.train()
        m.momentum = 1.0  # each forward leaves exactly its batch's statistics in the buffers
    # The class's own forward, not a `torch.compile`d one set on the instance (train.compile): this
    # mix of modes would compile a graph of its own, for a pass that runs a few times per cell.
    forward = type(model).forward.__get__(model)
    for images, _labels in batches:
        if len(images) < 2:  # one row has no variance (BatchNorm1d refuses it in training mode)
            continue
        with autocast(precision, device):
            forward(images)
        for m, (mean_sum, var_sum) in zip(norms, sums):
            mean_sum += m.running_mean * len(images)
            var_sum += m.running_var * len(images)
        seen += len(images)
    for m, (mean_sum, var_sum), (momentum, tracked) in zip(norms, sums, saved):
        m.momentum = momentum
        m.num_batches_tracked.copy_(tracked)
        m.train(False)
        if seen:
            m.running_mean.copy_(mean_sum / seen)
            m.running_var.copy_(var_sum / seen)
    return len(norms) if seen else 0


def recomputes_batch_norm_statistics(mode: str, updates: int) -> bool:
    """``train.precise_bn``: ``always``, ``never``, or ``auto``: while the running statistics of
    some training layer have been updated fewer than PRECISE_BN_AUTO_STEPS times (``updates``: the
    fewest of any)."""
    return mode == "always" or (mode == "auto" and updates < PRECISE_BN_AUTO_STEPS)


@torch.inference_mode()
def predict(model: nn.Module, batches: Batches, precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (float32) and labels of every row, in row order.

    Written into two buffers allocated once, for ``len(batches)`` rows (grown when the batches
    hold more), not kept as a list of per-batch tensors: those small tensors, allocated between
    each batch's large temporaries, fragmented glibc's heap, and an evaluation of 6,000 test rows
    (benchmarks/memory.py) peaked anywhere from 1.3 to 4.3 GB; with the buffers, 1.0-1.1 GB.
    """
    model.eval()
    device = model_device(model)
    logits = labels = None
    filled = 0
    for images, batch_labels in batches:
        with autocast(precision, device):
            batch_logits = model(images).float()
        end = filled + len(batch_labels)
        if logits is None or end > len(logits):
            rows = max(end, 2 * filled, len(batches) if isinstance(batches, Sized) else 0)
            logits = _grown(logits, filled, (rows, batch_logits.shape[1]), batch_logits)
            labels = _grown(labels, filled, (rows,), batch_labels)
        logits[filled:end] = batch_logits
        labels[filled:end] = batch_labels
        filled = end
    if logits is None:
        raise ValueError("no rows to predict on: the batches are empty")
    return logits[:filled].cpu(), labels[:filled].cpu()


def _grown(buffer: torch.Tensor | None, filled: int, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """A buffer of ``shape`` (dtype and device of ``like``) holding the first ``filled`` rows."""
    grown = torch.empty(shape, dtype=like.dtype, device=like.device)
    if buffer is not None:
        grown[:filled] = buffer[:filled]
    return grown


def evaluate(model: nn.Module, batches: Batches, loss_fn: nn.Module, precision: str = "fp32") -> tuple[float, float]:
    logits, labels = predict(model, batches, precision)
    return loss_fn(logits, labels).item(), (logits.argmax(1) == labels).float().mean().item()


def uniform_loss(loss_fn: nn.Module, num_classes: int) -> float:
    """The loss of all-zero scores (uniform predictions): the scale divergence is measured against."""
    return float(loss_fn(torch.zeros(1, num_classes), torch.zeros(1, dtype=torch.long)))


def check_divergence(epoch: int, train_loss: float, reference: float) -> None:
    """Raise DivergedError (one line: epoch, loss, what to do) when training has diverged."""
    if not math.isfinite(train_loss) or train_loss > DIVERGENCE_LOSS_RATIO * reference:
        raise DivergedError(epoch, train_loss, reference)


@dataclass
class FitResult:
    history: list[dict]
    best_state: dict
    best_epoch: int
    best_val_acc: float
    best_val_loss: float
    parameter_counts: dict
    precision: str = "fp32"


def _is_better(val_acc: float, val_loss: float, best_acc: float, best_loss: float) -> bool:
    """Higher validation accuracy wins; a tie goes to the lower validation loss."""
    return val_acc > best_acc or (val_acc == best_acc and val_loss < best_loss)


def fit(
    model: nn.Module,
    strategy: Strategy,
    train_batches: Batches,
    val_batches: Batches,
    settings: CellSettings,
    log: Log = print,
    checkpoint: Checkpoint | None = None,
    statistics_batches: Batches | None = None,
) -> FitResult:
    """Train for the configured epochs; keep the weights of the best validation epoch.

    ``model`` is a TransferModel or anything with ``apply_phase`` and ``parameter_counts`` (a head
    on cached features); the batches are any iterables of (inputs, labels). Raises DivergedError
    as soon as an epoch's training loss diverges. With a ``checkpoint``, the fit's state is saved
    after every epoch and a saved state of the same settings is resumed. ``statistics_batches``:
    the training rows in row order without augmentation, on which BatchNorm statistics are
    recomputed before validation as ``settings.precise_bn`` says (never without them).
    """
    loss_fn = make_loss(settings.head, settings.label_smoothing)
    # Heads on cached features are tiny: they stay in float32 whatever the setting.
    precision = resolve_precision(settings.precision, model_device(model)) if hasattr(model, "backbone") else "fp32"
    num_stages = getattr(model, "num_stages", 0)
    base_lr, patience = settings.optimizer.lr, settings.early_stopping_patience
    generator = getattr(train_batches, "generator", None)
    # Per BatchNorm layer, the training steps so far that updated its running statistics: layers
    # start training at different epochs (gradual, two_phase).
    bn_updates: dict[str, int] = {}
    phase: Phase | None = None
    history, best = [], None
    best_acc, best_loss = -1.0, math.inf
    first_epoch = 0
    saved = checkpoint.load(log) if checkpoint else None
    if saved is not None:
        first_epoch, history, bn_updates = saved["epoch"], saved["history"], saved["bn_updates"]
        best, best_acc, best_loss = (saved["best_epoch"], saved["best_state"]), saved["best_acc"], saved["best_loss"]
        phase = strategy.phase(first_epoch - 1, num_stages)
        model.apply_phase(phase)
        model.load_state_dict(saved["model"])
        optimizer = build_optimizer(model, settings, base_lr)
        optimizer.load_state_dict(saved["optimizer"])
        restore_random_states(saved["random"], generator)
        log(f"resumed from epoch {first_epoch} ({checkpoint.path})")
    for epoch in range(first_epoch, settings.epochs):
        next_phase = strategy.phase(epoch, num_stages)
        if next_phase != phase:  # a new phase changes what trains, so the optimizer starts afresh
            phase = next_phase
            model.apply_phase(phase)
            optimizer = build_optimizer(model, settings, base_lr)
            log(f"epoch {epoch + 1}: phase {phase.name!r}, {model.parameter_counts()}")
        lr = (phase.lr or base_lr) * lr_factor(settings.schedule, epoch, settings.epochs)
        set_learning_rate(optimizer, lr)
        started = time.perf_counter()
        norms_train = list(training_batch_norms(model))
        train_loss, train_acc, num_classes, steps = train_one_epoch(
            model, train_batches, optimizer, loss_fn, precision, epoch=epoch + 1
        )
        train_seconds = time.perf_counter() - started
        check_divergence(epoch + 1, train_loss, uniform_loss(loss_fn, num_classes))
        if norms_train:
            bn_updates.update({name: bn_updates.get(name, 0) + steps for name in norms_train})
            fewest = min(bn_updates[name] for name in norms_train)
            if statistics_batches is not None and recomputes_batch_norm_statistics(settings.precise_bn, fewest):
                layers = recompute_batch_norm_statistics(model, statistics_batches, precision)
                log(f"epoch {epoch + 1}: BatchNorm statistics of {layers} layer(s) recomputed on the training rows")
        val_loss, val_acc = evaluate(model, val_batches, loss_fn, precision)
        row = {
            "epoch": epoch + 1,
            "phase": phase.name,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "lr": lr,
            "seconds": time.perf_counter() - started,
            "train_seconds": train_seconds,
            "trainable_params": model.parameter_counts()["trainable_params"],
            "optimizer_params": sum(p.numel() for g in optimizer.param_groups for p in g["params"]),
        }
        history.append(row)
        log(
            "epoch {epoch}: train loss {train_loss:.4f} acc {train_acc:.4f} | val loss {val_loss:.4f} "
            "acc {val_acc:.4f} | lr {lr:.2g} | {seconds:.1f}s".format(**row)
        )
        if _is_better(val_acc, val_loss, best_acc, best_loss):
            best_acc, best_loss = val_acc, val_loss
            best = (epoch + 1, copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()}))
        elif patience and epoch + 1 - best[0] >= patience:
            log(f"early stop: no better validation accuracy for {patience} epochs")
            break
        if checkpoint is not None and epoch + 1 < settings.epochs:
            checkpoint.save(
                {
                    "epoch": epoch + 1,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "history": history,
                    "best_epoch": best[0],
                    "best_state": best[1],
                    "best_acc": best_acc,
                    "best_loss": best_loss,
                    "bn_updates": bn_updates,
                    "random": random_states(generator),
                }
            )
            failpoint("epoch_end", epoch + 1)
    return FitResult(history, best[1], best[0], best_acc, best_loss, model.parameter_counts(), precision)
