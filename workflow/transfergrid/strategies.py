"""Fine-tuning strategies: small, named policies that say, epoch by epoch, which stages of the
backbone are frozen. The trainer asks the policy for the current ``Phase`` and rebuilds its optimizer
whenever the phase changes, so multi-phase recipes need no special case in the loop."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Phase:
    """What trains during one epoch."""

    frozen_stages: int  # the first k backbone stages are frozen
    whole_base: bool = False  # the entire backbone is frozen, parameters outside any stage too
    lr: float | None = None  # a learning rate this phase imposes; None keeps the configured one
    name: str = "train"


class Strategy:
    """Base policy: subclasses override ``phase``."""

    name = "strategy"
    pretrained_only = False  # True when the recipe is meaningless from random weights
    forced_weights: str | None = None  # the weight source this recipe always starts from
    rate_options: tuple[str, ...] = ()  # strategy options that are learning rates

    def phase(self, epoch: int, num_stages: int) -> Phase:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class FullFineTune(Strategy):
    """Train everything, starting from the cell's weights."""

    name = "full"

    def phase(self, epoch: int, num_stages: int) -> Phase:
        return Phase(frozen_stages=0)


class Scratch(FullFineTune):
    """The baseline: random initialisation, everything trains (the cell's weights are forced to none)."""

    name = "scratch"
    forced_weights = "none"


class FrozenBase(Strategy):
    """Freeze the whole backbone (BatchNorm in eval mode); only the head trains."""

    name = "frozen"

    def phase(self, epoch: int, num_stages: int) -> Phase:
        return Phase(frozen_stages=num_stages, whole_base=True, name="head")


class FreezeFirst(Strategy):
    """Freeze the first k stages, train the rest and the head: `freeze:k` sweeps the depth."""

    def __init__(self, k: str | int):
        if not str(k).isdigit():
            raise ValueError(f"freeze depth must be a whole number, got {k!r}")
        self.k = int(k)
        self.name = f"freeze:{self.k}"

    def phase(self, epoch: int, num_stages: int) -> Phase:
        if self.k > num_stages:
            raise ValueError(f"strategy {self.name!r} asks for {self.k} frozen stages, the backbone has {num_stages}")
        return Phase(frozen_stages=self.k)


class TwoPhase(Strategy):
    """Phase 1: base frozen, head trained at a high LR; phase 2: everything unfrozen at a low LR."""

    name = "two_phase"
    pretrained_only = True
    rate_options = ("head_lr", "finetune_lr")  # its own learning rates, scaled by an lr candidate

    def __init__(self, head_epochs: int = 3, head_lr: float = 1e-2, finetune_lr: float = 1e-4):
        self.head_epochs, self.head_lr, self.finetune_lr = head_epochs, head_lr, finetune_lr

    def phase(self, epoch: int, num_stages: int) -> Phase:
        if epoch < self.head_epochs:
            return Phase(frozen_stages=num_stages, whole_base=True, lr=self.head_lr, name="head")
        return Phase(frozen_stages=0, lr=self.finetune_lr, name="finetune")


class Gradual(Strategy):
    """Gradual unfreezing: head only first, then one more stage from the top every M epochs."""

    name = "gradual"
    pretrained_only = True

    def __init__(self, epochs_per_stage: int = 1):
        self.epochs_per_stage = epochs_per_stage

    def phase(self, epoch: int, num_stages: int) -> Phase:
        unfrozen = epoch // self.epochs_per_stage
        if unfrozen == 0:
            return Phase(frozen_stages=num_stages, whole_base=True, name="head")
        frozen = max(0, num_stages - unfrozen)
        return Phase(frozen_stages=frozen, name=f"top{num_stages - frozen}")


STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (Scratch, FullFineTune, FrozenBase, TwoPhase, Gradual)
}
# Parametrised strategies, written `name:argument` in config.
PARAMETRISED: dict[str, type] = {"freeze": FreezeFirst}


def strategy_names() -> list[str]:
    return sorted(STRATEGIES) + sorted(f"{name}:<k>" for name in PARAMETRISED)


def parse_strategy(name: str, options: dict | None = None) -> Strategy:
    """A strategy object from its config name; ValueError for unknown names."""
    base, colon, argument = name.partition(":")
    if colon and base in PARAMETRISED:
        return PARAMETRISED[base](argument, **(options or {}))
    if not colon and base in STRATEGIES:
        return STRATEGIES[base](**(options or {}))
    raise ValueError(f"unknown strategy {name!r}")
