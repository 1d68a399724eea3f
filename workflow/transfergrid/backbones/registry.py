"""The backbone registry: which backbones exist, how each is built (library, architecture, family
adapter), its stage count, and its ``pretrained_cfg`` (native input size and normalisation) per
weight source. Torch-free: Snakemake resolves names, sizes and freeze depths while it parses.

As in timm, each registered model carries its ``pretrained_cfg`` as data; a test checks every entry
against the libraries' own metadata (torchvision's weights enums, timm's pretrained configs) and
every stage count against the built network. Names that are not registered (any other torchvision
or timm classification model) are resolved through the library itself, which imports it.
"""

from __future__ import annotations

import functools

from ..naming import FILE_PREFIX, HUB, PACKAGED, PRETRAIN_PREFIX, SCRATCH
from .spec import BackboneSpec, PretrainedCfg

BACKBONES: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    BACKBONES[spec.name] = spec
    return spec


def _is_timm_model(name: str) -> bool:
    import timm

    return timm.is_model(name)


def _is_torchvision_model(name: str) -> bool:
    import torchvision

    return name in torchvision.models.list_models(module=torchvision.models)


@functools.cache
def resolve_backbone(name: str) -> BackboneSpec:
    """Registry entry for ``name``; unregistered torchvision/timm names get a generic entry (this
    imports the library). Raises KeyError when neither library knows the name."""
    if name in BACKBONES:
        return BACKBONES[name]
    if _is_torchvision_model(name):
        return BackboneSpec(name, "torchvision", name)
    if _is_timm_model(name):
        return BackboneSpec(name, "timm", name, adapter="timm")
    raise KeyError(name)


def registered_names() -> list[str]:
    return sorted(BACKBONES)


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
    if base not in valid or (base.endswith(":") and not weights[len(base) :]):
        raise ValueError(f"backbone {spec.name!r} has no weight source {weights!r}; valid: {valid}")


def native_preprocessing(spec: BackboneSpec, weights: str) -> PretrainedCfg:
    """Normalisation and native input size for ``spec`` started from ``weights``.

    Scratch, file and pretrain weights use the architecture's canonical ImageNet preprocessing, so
    every cell of a backbone sees identically normalised inputs. Unregistered names read it from
    their library.
    """
    if weights == PACKAGED and spec.packaged_pretrained_cfg is not None:
        return spec.packaged_pretrained_cfg
    if spec.pretrained_cfg is not None:
        return spec.pretrained_cfg
    from .metadata import library_preprocessing

    return library_preprocessing(spec, weights)


def stage_count(spec: BackboneSpec) -> int:
    """How many stages ``freeze:k`` can freeze: from the registry, or by building the network."""
    if spec.num_stages is not None:
        return spec.num_stages
    from .build import build_backbone

    return build_backbone(spec).num_stages
