"""The trainable network of a cell: a backbone, a head, and the freezing rules of a strategy."""

from __future__ import annotations

import torch
from torch import nn

from .backbones import Backbone
from .strategies import Phase

_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


class TransferModel(nn.Module):
    """backbone -> pooled features -> head. ``apply_phase`` freezes parts of the backbone.

    Frozen modules stay in eval mode even when the model is put in train mode, so their
    BatchNorm running statistics never move (unless ``train_bn`` is set).
    """

    def __init__(self, backbone: Backbone, head: nn.Module, train_bn: bool = False):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.train_bn = train_bn
        self._frozen: list[nn.Module] = []
        self._base_frozen = False

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # A fully frozen base needs no autograd graph: skipping it saves memory and time.
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self._base_frozen):
            features = self.backbone(images)
        return self.head(features)

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
        self.train(self.training)

    def train(self, mode: bool = True) -> "TransferModel":
        super().train(mode)
        if mode:
            for module in self._frozen:
                for sub in module.modules():
                    if not (self.train_bn and isinstance(sub, _NORM_TYPES)):
                        # Per module, not recursive (eval() would reach the norms too); this also
                        # stops dropout and stochastic depth inside frozen parts.
                        sub.training = False
        return self

    def parameter_counts(self) -> dict[str, int]:
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        return {"trainable_params": trainable, "frozen_params": total - trainable, "total_params": total}
