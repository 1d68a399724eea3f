"""Frozen heads on cached features: every head, seed, fraction and learning-rate candidate of one
feature cache, fitted in one job that writes each candidate's own directory.

Training a head on cached features is the same experiment as training it through the frozen
network (same initialisation, same batches, same loss), without running the backbone at all: the
job needs torch, not torchvision or timm, and its cost is a few milliseconds per epoch. One job per
feature cache instead of one per cell removes a process start-up (3-5 s) per cell, which is most of
what a frozen head costs; adding a head refits its siblings, which is cheap and deterministic.
Candidates that pose the same closed-form problem (the seeds of a logreg recipe on a pretrained
base's features) share one fit (``closed_form_problem``).

A head-only ``model.pt`` holds the head's weights (``head.*`` keys of the cell's TransferModel) and
the settings that rebuild the frozen base (``model.load_trained_model``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

from .batches import feature_batches
from .cell import CandidateResult, record_candidate
from .errors import DivergedError, TransferGridError
from .features import HeadOnlyModel, load_features
from .heads import HEADS, build_cell_head, fitted_by_gradient_descent, make_loss
from .io import read_json
from .logreg import fit_logreg_on_features
from .loop import FitResult, Log, evaluate, fit
from .runtime import prepare_job, seed_everything
from .settings import CellSettings
from .split import fraction_rows, read_split, split_rows
from .strategies import parse_strategy


@dataclass(frozen=True)
class FrozenCandidate:
    """One learning-rate candidate of one frozen cell, and the directory it is written to."""

    settings: CellSettings  # the candidate's own settings (rates already multiplied)
    out_dir: Path
    weights_file: str | None  # the frozen base's starting weights (None: random, from the seed)


def check_source(payload: dict, settings: CellSettings, features_path: Path) -> None:
    """The cached features must come from the cell's own frozen base: same backbone, weights and,
    for a random base, the same init seed."""
    expected = (settings.backbone, settings.weights, settings.seed if settings.weights == "none" else 0)
    cached = (payload["backbone"], payload["weights"], int(payload["init_seed"]))
    if cached != expected:
        raise TransferGridError(
            f"cached features {features_path} come from {cached} (backbone, weights, init seed), "
            f"not from the cell's base {expected}"
        )


def head_model(settings: CellSettings, payload: dict, num_classes: int) -> HeadOnlyModel:
    """The cell's freshly initialised head on the cache's features, built exactly as ``build_model``
    builds it after the (RNG-isolated) backbone: the same seed gives the same initial weights."""
    seed_everything(settings.seed)
    width = payload[HEADS[settings.head].input].shape[1]
    head = build_cell_head(settings, width, num_classes)
    aux = int(payload["aux_features"] or 0)
    frozen = int(payload["backbone_params"]) + (aux * num_classes + num_classes if aux else 0)
    return HeadOnlyModel(head, frozen, int(payload["num_stages"]))


def fit_head_by_sgd(
    model: HeadOnlyModel, settings: CellSettings, payload: dict, rows: dict, device, log
) -> tuple[FitResult, dict]:
    """Heads trained by the epoch loop at the candidate's learning rate; they choose nothing else."""
    strategy = parse_strategy(settings.strategy, settings.strategy_options)
    train_batches = feature_batches(settings, payload, rows["train"], device, True)
    result = fit(
        model,
        strategy,
        train_batches,
        feature_batches(settings, payload, rows["val"], device, False),
        settings,
        log,
        statistics_batches=train_batches.in_row_order(),
    )
    return result, {}


def fit_head_in_closed_form(
    model: HeadOnlyModel, settings: CellSettings, payload: dict, rows: dict, device, log
) -> tuple[FitResult, dict]:
    """Heads fit by scikit-learn (logreg), regularisation chosen on val. Also returns what the fit
    chose, for train.json: ``C``, whether it is an end of the C grid (the grid should then be
    widened) and the validation accuracy of every C tried."""
    linear, chosen_c, val_accuracy = fit_logreg_on_features(
        payload, rows["train"], rows["val"], model.head.out_features, settings.head_options, settings.seed
    )
    model.head.load_state_dict(linear.state_dict())
    model.apply_phase(parse_strategy("frozen").phase(0, model.num_stages))
    loss_fn = make_loss(settings.head, 0.0)
    scores = {
        split: evaluate(model, feature_batches(settings, payload, rows[split], device, False), loss_fn)
        for split in ("train", "val")
    }
    log(f"logreg: C={chosen_c} chosen on val; val accuracy per C: {val_accuracy}")
    history = [
        {
            "epoch": 1,
            "phase": f"logreg C={chosen_c}",
            "train_loss": scores["train"][0],
            "train_acc": scores["train"][1],
            "val_loss": scores["val"][0],
            "val_acc": scores["val"][1],
            "lr": 0.0,
            "seconds": 0.0,
            "train_seconds": 0.0,
            "trainable_params": model.parameter_counts()["trainable_params"],
            "optimizer_params": 0,
        }
    ]
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    result = FitResult(history, state, 1, scores["val"][1], scores["val"][0], model.parameter_counts())
    tried = sorted(val_accuracy)
    chosen = {
        "C": chosen_c,
        "C_at_edge": len(tried) > 1 and chosen_c in (tried[0], tried[-1]),
        "val_acc_per_C": {f"{c:g}": accuracy for c, accuracy in sorted(val_accuracy.items())},
    }
    return result, chosen


def closed_form_problem(settings: CellSettings, rows: dict) -> str:
    """What a closed-form fit of one candidate depends on, as a key: its settings without the seed,
    and its rows. The seed only initialises a head that the fit then replaces, and lbfgs draws no
    random numbers; the split does not depend on the cell's seed either. So on the features of a
    pretrained base (one cache for every seed) the seeds of one fraction solve the same problem."""
    return json.dumps(
        {
            "settings": replace(settings, seed=0).to_dict(),
            "rows": {split: rows[split].tolist() for split in sorted(rows)},
        },
        sort_keys=True,
    )


def fit_frozen_group(
    candidates: list[FrozenCandidate],
    features_path: Path,
    split_csv: Path,
    classes_json: Path,
    threads: int = 1,
    log: Log = print,
) -> list[CandidateResult]:
    """Fit every candidate's head on the cached features and write its directory."""
    device = prepare_job(threads, candidates[0].settings.device)
    payload = load_features(features_path)
    split = read_split(split_csv)
    classes = read_json(classes_json)["classes"]
    results = []
    # Closed-form fits by their problem (closed_form_problem): each is solved once, and the
    # candidates that pose the same problem get its result and its measured seconds.
    closed_form_fits = {}
    for candidate in candidates:
        settings = candidate.settings
        check_source(payload, settings, features_path)
        rows = {"train": fraction_rows(split, settings.fraction), "val": split_rows(split, "val")}
        fitter = fit_head_by_sgd if fitted_by_gradient_descent(settings.head) else fit_head_in_closed_form
        problem = closed_form_problem(settings, rows) if fitter is fit_head_in_closed_form else None
        if problem in closed_form_fits:
            result, chosen, wall, first = closed_form_fits[problem]
            chosen = {**chosen, "same_fit_as": str(first)}
            log(f"{candidate.out_dir}: the same closed-form fit as {first} (only the seed differs)")
        else:
            model = head_model(settings, payload, len(classes)).to(device)
            started = time.perf_counter()
            try:
                result, chosen = fitter(model, settings, payload, rows, device, log)
            except DivergedError as diverged:
                result, chosen = diverged, {}
            wall = time.perf_counter() - started
            if problem is not None:
                closed_form_fits[problem] = (result, chosen, wall, candidate.out_dir)
        info = {
            "fit": fitter.__name__,
            "num_train": len(rows["train"]),
            "num_val": len(rows["val"]),
            "feature_seconds": float(payload["extraction_seconds"]),
            **chosen,
        }
        results.append(
            record_candidate(
                candidate.out_dir,
                settings,
                classes,
                result,
                {**info, "wall_seconds": wall, "device": str(device), "num_classes": len(classes)},
                head_only=True,
                weights_file=candidate.weights_file,
                log=log,
            )
        )
    return results
