"""The data-size x similarity map of transfer learning, tested against the grid's own results.

The practitioner's rule of thumb (CS231n's transfer-learning notes, the Keras guide): with a small
target similar to the source, freeze the base and train a new classifier; small and different,
freeze fewer (only lower) stages and augment; large and similar, fine-tune the upper stages or
all; large and different, train the entire model. Each point is a dataset, a training fraction and
a pretrained weight source: size is training images per class, similarity the frozen-feature class
separability of the target under the source's features (``similarity``, GBC). Both boundaries are
settings (``report.quadrant``), not constants: separability values bunch together, and what counts
as "large" depends on the task. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd


@dataclass(frozen=True)
class Quadrant:
    size: str  # "small" or "large"
    similarity: str  # "similar" or "different"
    advice: str
    strategies: tuple[str, ...]  # strategy kinds (``freeze`` for every freeze:k) that follow the advice

    @property
    def name(self) -> str:
        return f"{self.size} + {self.similarity}"


QUADRANTS = {
    ("large", "different"): Quadrant("large", "different", "train the entire model", ("full", "scratch")),
    ("large", "similar"): Quadrant(
        "large", "similar", "fine-tune the upper stages or all", ("full", "freeze", "gradual", "two_phase")
    ),
    ("small", "similar"): Quadrant("small", "similar", "freeze the base, train a new classifier", ("frozen",)),
    ("small", "different"): Quadrant(
        "small", "different", "freeze fewer (lower) stages, and augment", ("freeze", "gradual", "two_phase")
    ),
}


def strategy_kind(strategy: str) -> str:
    return strategy.partition(":")[0]


def place(images_per_class: float, similarity: float, size_threshold: float, similarity_threshold: float) -> Quadrant:
    """The quadrant of a point: large from ``size_threshold`` images per class, similar from
    ``similarity_threshold`` separability (both inclusive)."""
    size = "large" if images_per_class >= size_threshold else "small"
    kind = "similar" if similarity >= similarity_threshold else "different"
    return QUADRANTS[(size, kind)]


def verdict(quadrant: Quadrant, candidates: pd.DataFrame) -> tuple[str, str, str]:
    """(winning recipe, agreement, sentence) for one point, from its candidate recipes (rows of
    ``recipes.recipe_table``: validation means, top groups). The winner is the validation-best
    recipe; the map agrees when the winner, or a recipe of the winner's top group, follows it."""
    if candidates.empty:
        return "", "untested", "the grid has no recipe for this point"
    best = candidates.sort_values("val_acc_mean", ascending=False).iloc[0]
    winner = f"{best['strategy']} / {best['head']}"
    follows = candidates["strategy"].map(strategy_kind).isin(quadrant.strategies)
    if strategy_kind(best["strategy"]) in quadrant.strategies:
        return winner, "agrees", f"the validation-best recipe ({winner}) is what the map advises ({quadrant.advice})"
    tied = candidates[follows & candidates["in_top_group"].astype(bool)]
    if not tied.empty:
        other = tied.sort_values("val_acc_mean", ascending=False).iloc[0]
        return (
            winner,
            "agrees within the top group",
            f"{winner} won, but {other['strategy']} / {other['head']}, which follows the map "
            f"({quadrant.advice}), is statistically tied with it",
        )
    if not follows.any():
        return winner, "untested", f"the grid has no recipe that follows the map's advice ({quadrant.advice})"
    other = candidates[follows].sort_values("val_acc_mean", ascending=False).iloc[0]
    return (
        winner,
        "disagrees",
        f"the map advises to {quadrant.advice}, but {winner} beat the best such recipe "
        f"({other['strategy']} / {other['head']}: val {other['val_acc_mean']:.3f} against {best['val_acc_mean']:.3f})",
    )


def map_points(recipes: pd.DataFrame, similarities: pd.DataFrame, thresholds: dict) -> pd.DataFrame:
    """One row per dataset x fraction x pretrained weight source: its size, similarity, quadrant,
    the map's advice and the grid's verdict on it. ``similarities``: dataset, backbone, weights,
    separability, ci_low, ci_high. Candidates are the recipes of the point's backbone from these
    weights or from scratch, on the point's dataset and fraction."""
    rows = []
    for source in similarities.itertuples():
        for fraction, family in recipes[recipes["dataset"] == source.dataset].groupby("fraction", sort=True):
            mine = family[(family["backbone"] == source.backbone) & family["weights"].isin([source.weights, "none"])]
            if mine.empty:
                continue
            images_per_class = float(mine["images_per_class"].iloc[0])
            quadrant = place(
                images_per_class, source.separability, thresholds["size_threshold"], thresholds["similarity_threshold"]
            )
            winner, agreement, sentence = verdict(quadrant, mine)
            rows.append(
                {
                    "dataset": source.dataset,
                    "fraction": fraction,
                    "backbone": source.backbone,
                    "weights": source.weights,
                    "images_per_class": images_per_class,
                    "similarity": source.separability,
                    # +-1.96 bootstrap standard deviations: the stability of the score. (The
                    # bootstrap's percentile interval is biased upwards for this score: resampling
                    # with replacement duplicates images and shrinks class variances.)
                    "similarity_std": source.std,
                    "similarity_low": source.separability - 1.96 * source.std,
                    "similarity_high": source.separability + 1.96 * source.std,
                    "quadrant": quadrant.name,
                    "advice": quadrant.advice,
                    "winner": winner,
                    "agreement": agreement,
                    "sentence": sentence,
                }
            )
    return pd.DataFrame(rows)


def recommend(project: Path, dataset: str, thresholds: dict) -> list[str]:
    """The map's advice for ``dataset`` from its measured similarities and its training-split
    size, one line per pretrained weight source and grid fraction, before anything is trained
    (``snakemake results/similarity/<dataset>/<backbone>/<weights>.json`` measures a similarity
    from the frozen features alone)."""
    import json

    import yaml

    from .errors import TransferGridError

    project = Path(project)
    measured = sorted((project / "results" / "similarity" / dataset).glob("*/*.json"))
    split_csv = project / "results" / "datasets" / dataset / "split.csv"
    if not measured or not split_csv.is_file():
        raise TransferGridError(
            f"no similarity measured for dataset {dataset!r} under {project / 'results' / 'similarity'}: run "
            f"`snakemake results/similarity/{dataset}/<backbone>/<weights>.json` (no training needed)"
        )
    split = pd.read_csv(split_csv)
    train = split[split["split"] == "train"]
    per_class = train.groupby("label").size()
    config_file = project / "config.yaml"
    fractions = [1.0]
    if config_file.is_file():
        config = yaml.safe_load(config_file.read_text()) or {}
        fractions = (config.get("grid") or {}).get("fractions") or fractions
    lines = []
    for path in measured:
        score = json.loads(path.read_text())
        for fraction in sorted(fractions):
            images = float((per_class * fraction).round().clip(lower=1).mean())
            quadrant = place(
                images, score["separability"], thresholds["size_threshold"], thresholds["similarity_threshold"]
            )
            lines.append(
                f"{dataset} f={fraction:g} ({path.parent.name} · {score['weights']}): {images:.0f} training images per "
                f"class, similarity {score['separability']:.3f} (bootstrap std {score['std']:.3f}) -> {quadrant.name}: "
                f"{quadrant.advice} (strategies: {', '.join(quadrant.strategies)})"
            )
    return lines
