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

    def phase(self, epoch: int, num_stages: int) -> Phase:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class FullFineTune(Strategy):
    """Train everything, starting from the cell's weights."""

    name = "full"

    def phase(self, epoch: int, num_stages: int) -> Phase:
        return Phase(frozen_stages=0)


class FrozenBase(Strategy):
    """Freeze the whole backbone (BatchNorm in eval mode); only the head trains."""

    name = "frozen"

    def phase(self, epoch: int, num_stages: int) -> Phase:
        return Phase(frozen_stages=num_stages, whole_base=True)


STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (FullFineTune, FrozenBase)}
# Parametrised strategies, written `name:argument` in config.
PARAMETRISED: dict[str, type] = {}


def strategy_names() -> list[str]:
    return sorted(STRATEGIES) + sorted(f"{name}:<k>" for name in PARAMETRISED)


def parse_strategy(name: str, options: dict | None = None) -> Strategy:
    """A strategy object from its config name; ValueError for unknown names."""
    base, _, argument = name.partition(":")
    if argument and base in PARAMETRISED:
        return PARAMETRISED[base](argument, **(options or {}))
    if not argument and base in STRATEGIES:
        return STRATEGIES[base](**(options or {}))
    raise ValueError(f"unknown strategy {name!r}")
