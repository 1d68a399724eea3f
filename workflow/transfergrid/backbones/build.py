"""Building a backbone: the library's model with its classifier stripped, wrapped as ``Backbone``,
optionally loaded with a library state dict."""

from __future__ import annotations

import torch
from torch import nn

from .adapters import ADAPTERS, adapter_for
from .spec import BackboneSpec
from .stages import ParameterGroup, eval_mode, named_part


def _library_constructor(spec: BackboneSpec, **kwargs):
    """A zero-argument callable building the library's model with random weights."""
    if spec.library == "timm":
        import timm

        return lambda: timm.create_model(spec.arch, pretrained=False, **kwargs)
    import torchvision

    return lambda: torchvision.models.get_model(spec.arch, weights=None, **kwargs)


def build_library_model(spec: BackboneSpec, loading: bool = False) -> nn.Module:
    """The library's model with random weights and its original classifier.

    ``loading``: weights will be loaded over it, so a costly custom init may be skipped.
    """
    kwargs = ADAPTERS[spec.adapter](**spec.adapter_options).build_kwargs(spec, loading) if spec.adapter else {}
    return _library_constructor(spec, **kwargs)()


class Backbone(nn.Module):
    """A library classification network with its class-score layer removed.

    ``forward(images) = pool(forward_features(images))`` -> ``[N, num_features]``; see the module
    docstring for the adapters that implement each family.
    """

    def __init__(self, spec: BackboneSpec, net: nn.Module):
        super().__init__()
        self.spec = spec
        self.adapter = adapter_for(spec, net)
        full_keys = set(net.state_dict())
        self.aux_features = self.adapter.aux_features(net)
        self.adapter.strip(net)
        self.net = net
        # The ImageNet classifier's keys: a library state dict may carry them, loading drops them.
        self.classifier_keys = frozenset(full_keys - set(net.state_dict()))
        self.stage_names: tuple[tuple[str, ...], ...] = spec.stages or self.adapter.stages(net)
        self.num_features, self.feature_channels = self.adapter.dims(self, spec)

    @property
    def num_stages(self) -> int:
        return len(self.stage_names)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.adapter.forward_features(self.net, images)

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.adapter.pool(self.net, fmap)

    def global_average(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.adapter.global_average(self.net, fmap)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_features(images))

    def forward_with_aux(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(pooled features, auxiliary-branch features or None); the aux vector exists only for
        inception_v3 in training mode, with inputs large enough for its branch (~299 px)."""
        fmap, aux = self.adapter.features_and_aux(self.net, images)
        return self.pool(fmap), aux

    def stage_modules(self) -> list[list[nn.Module]]:
        """Modules of each stage, input to output (for freezing the first k). Parameters held
        directly by the network (ViT's class token) come wrapped in a parameter-only module."""
        stages = []
        for names in self.stage_names:
            items = [(name, named_part(self.net, name)) for name in names]
            stages.append([ParameterGroup(n, m) if isinstance(m, nn.Parameter) else m for n, m in items])
        return stages

    def load_library_state_dict(self, state_dict: dict) -> None:
        """Load a state dict of the library model, with or without its ImageNet classifier keys.

        Raises ValueError naming keys that are unexpected, missing or of the wrong shape.
        """
        own = self.net.state_dict()
        state = {k: v for k, v in state_dict.items() if k not in self.classifier_keys}
        unexpected = [k for k in state if k not in own]
        # Old torchvision checkpoints predate BatchNorm's num_batches_tracked counter.
        missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
        wrong = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
        problems = [
            (label, keys)
            for label, keys in (("unexpected", unexpected), ("missing", missing), ("wrong shape", wrong))
            if keys
        ]
        if problems:
            detail = "; ".join(f"{label} keys ({len(keys)}): {', '.join(keys[:5])}" for label, keys in problems)
            raise ValueError(f"state dict does not fit backbone {self.spec.name!r} ({self.spec.arch}): {detail}")
        self.net.load_state_dict(state, strict=False)

    def _probe(self, size: int) -> torch.Tensor:
        """The feature map of one blank ``size`` px image, in eval mode, without gradients."""
        with eval_mode(self.net), torch.no_grad():
            return self.forward_features(torch.zeros(1, 3, size, size))


def build_backbone(spec: BackboneSpec, state_dict: dict | None = None) -> Backbone:
    """A Backbone with random weights, or with ``state_dict`` (keys of the library model, with or
    without the ImageNet classifier) loaded; ValueError when other keys do not fit."""
    backbone = Backbone(spec, build_library_model(spec, loading=state_dict is not None))
    if state_dict is not None:
        backbone.load_library_state_dict(state_dict)
    return backbone
