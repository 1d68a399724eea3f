"""Materialise a backbone's starting weights as a file, on the head node, so that training jobs
on compute nodes need no internet. The file holds the library model's state dict."""

from __future__ import annotations

from pathlib import Path

import torch

from .backbones import HUB, PACKAGED, fetch_hub_state_dict, load_packaged_state_dict, resolve_backbone
from .errors import ConfigError
from .io import atomic_path


def materialise_weights(backbone: str, weights: str, out_path: Path, log=print) -> None:
    spec = resolve_backbone(backbone)
    if weights == PACKAGED:
        state = load_packaged_state_dict(spec)
    elif weights == HUB:
        state = fetch_hub_state_dict(spec)
    else:
        raise ConfigError(f"weights {weights!r} of backbone {backbone!r} cannot be fetched")
    log(f"{backbone}/{weights}: {len(state)} tensors, {sum(t.numel() for t in state.values())} values")
    with atomic_path(out_path) as tmp:
        torch.save({"state_dict": state, "backbone": backbone, "arch": spec.arch, "weights": weights}, tmp)
