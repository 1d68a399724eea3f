"""The trainable network of a cell: a backbone, a head, and the freezing rules of a strategy; and
``build_model``, which makes it from a cell's settings."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .backbones import resolve_backbone
from .backbones.build import Backbone, build_backbone
from .heads import HEADS, build_cell_head, head_input_size
from .settings import CellSettings
from .strategies import Phase

_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
AUX_LOSS_WEIGHT = 0.4  # inception_v3's auxiliary classifier, as in its paper and torchvision's recipe


class TransferModel(nn.Module):
    """backbone -> features -> head. ``apply_phase`` freezes parts of the backbone.

    Frozen modules stay in eval mode even when the model is put in train mode, so their
    BatchNorm running statistics never move (unless ``train_bn`` is set). Backbones with an
    auxiliary classifier (inception_v3) get an auxiliary head that only acts in training.
    """

    def __init__(
        self, backbone: Backbone, head: nn.Module, num_classes: int, spatial_head: bool = False, train_bn: bool = False
    ):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.spatial_head = spatial_head  # the head reads the global average of the feature map
        aux_features = getattr(backbone, "aux_features", None)
        self.aux_head = nn.Linear(aux_features, num_classes) if aux_features else None
        self.train_bn = train_bn
        self._frozen: list[nn.Module] = []
        self._base_frozen = False
        self._channels_last = False

    def use_channels_last(self) -> TransferModel:
        """Weights and inputs in channels-last memory order, which oneDNN and cuDNN run faster."""
        self.to(memory_format=torch.channels_last)
        self._channels_last = True
        return self

    @property
    def num_stages(self) -> int:
        return len(self.backbone.stage_names)

    def features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What the head reads, and the auxiliary branch's features in training (else None)."""
        if self.spatial_head:
            return self.backbone.global_average(self.backbone.forward_features(images)), None
        if self.aux_head is not None and self.training:
            return self.backbone.forward_with_aux(images)
        return self.backbone(images), None

    def forward(self, images: torch.Tensor):
        if self._channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        # A fully frozen base needs no autograd graph: skipping it saves memory and time.
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self._base_frozen):
            features, aux_features = self.features(images)
        logits = self.head(features)
        if aux_features is not None and not self._base_frozen:
            return logits, self.aux_head(aux_features)
        return logits

    def frozen_modules(self, phase: Phase) -> list[nn.Module]:
        if phase.whole_base:
            return [self.backbone]
        stages = self.backbone.stage_modules()[: phase.frozen_stages]
        return [module for stage in stages for module in stage]

    def apply_phase(self, phase: Phase) -> None:
        """Set ``requires_grad`` for the phase: frozen modules off, everything else on."""
        for parameter in self.parameters():
            parameter.requires_grad_(True)
        self._frozen = self.frozen_modules(phase)
        self._base_frozen = phase.whole_base
        for module in self._frozen:
            for parameter in module.parameters():
                parameter.requires_grad_(False)
        if self.aux_head is not None:
            self.aux_head.requires_grad_(not phase.whole_base)
        self.train(self.training)

    def train(self, mode: bool = True) -> TransferModel:
        super().train(mode)
        if mode:
            for module in self._frozen:
                for sub in module.modules():
                    if not (self.train_bn and isinstance(sub, _NORM_TYPES)):
                        # Per module, not recursive (eval() would reach the norms too); this also
                        # stops dropout and stochastic depth inside frozen parts.
                        sub.training = False
        return self

    def optimizer_groups(self, discriminative_lr: float | None) -> list[dict]:
        """Trainable parameters as optimizer groups with an ``lr_scale`` each.

        With a discriminative factor f the head trains at scale 1, the top stage at f, the one below
        at f^2 and so on; parameters outside any stage go with the head.
        """
        trainable = [p for p in self.parameters() if p.requires_grad]
        if not discriminative_lr:
            return [{"params": trainable, "lr_scale": 1.0}]
        groups, staged = [], set()
        for depth, stage in enumerate(reversed(self.backbone.stage_modules()), start=1):
            params = [p for module in stage for p in module.parameters() if p.requires_grad and id(p) not in staged]
            staged.update(id(p) for p in params)
            if params:
                groups.append({"params": params, "lr_scale": discriminative_lr**depth})
        rest = [p for p in trainable if id(p) not in staged]
        return [{"params": rest, "lr_scale": 1.0}, *groups]

    def parameter_counts(self) -> dict[str, int]:
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        return {"trainable_params": trainable, "frozen_params": total - trainable, "total_params": total}


def load_weights_file(weights_file: Path | None) -> dict | None:
    """The library state dict of a starting-weights file (``weights`` rules), or None."""
    if weights_file is None:
        return None
    return torch.load(weights_file, map_location="cpu", weights_only=True)["state_dict"]


def build_base(backbone: str, weights_file: Path | None, init_seed: int) -> Backbone:
    """The cell's backbone: loaded from the weights file, or random.

    A random base must be a pure function of the cell seed, whatever ran before: the feature cache
    and the cell build it separately and must get the very same network.
    """
    state = load_weights_file(weights_file)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        return build_backbone(resolve_backbone(backbone), state)


def build_model(settings: CellSettings, num_classes: int, weights_file: Path | None) -> TransferModel:
    """Backbone (random or from the weights file) plus a freshly initialised head."""
    backbone = build_base(settings.backbone, weights_file, settings.seed)
    head_spec = HEADS[settings.head]
    head = build_cell_head(settings, head_input_size(head_spec, backbone), num_classes)
    model = TransferModel(
        backbone, head, num_classes, spatial_head=head_spec.input == "spatial", train_bn=settings.train_bn
    )
    return model.use_channels_last() if settings.channels_last else model
