"""The libraries' own preprocessing metadata (torchvision's weights enums, timm's pretrained
configs): for names the registry does not hold, and for the test that checks the registry."""

from __future__ import annotations

import torch

from ..naming import PACKAGED
from .spec import BackboneSpec, PretrainedCfg


def _timm_cfg(tag: str) -> PretrainedCfg:
    import timm

    cfg = timm.models.get_pretrained_cfg(tag)
    if cfg is None:  # a timm model with no pretrained tag: fall back to timm's ImageNet defaults
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        return PretrainedCfg(224, tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD))
    return PretrainedCfg(int(cfg.input_size[-1]), tuple(cfg.mean), tuple(cfg.std))


def _torchvision_cfg(arch: str) -> PretrainedCfg:
    import torchvision

    transforms = torchvision.models.get_model_weights(arch).DEFAULT.transforms()
    return PretrainedCfg(int(transforms.crop_size[0]), tuple(transforms.mean), tuple(transforms.std))


def _fold_transform_input(spec: BackboneSpec, prep: PretrainedCfg) -> PretrainedCfg:
    """The metadata's normalisation followed by torchvision's ``transform_input`` step, as one
    normalisation (the model is built with transform_input=False; the hub weights need it)."""
    import torchvision

    with torch.device("meta"):  # only the class is needed: no weights are initialised
        model_class = type(torchvision.models.get_model(spec.arch, weights=None, init_weights=False))
    mean, std = torch.tensor(prep.mean).view(1, -1, 1, 1), torch.tensor(prep.std).view(1, -1, 1, 1)
    pixels = torch.tensor([0.0, 1.0], dtype=torch.float64).view(2, 1, 1, 1).expand(2, len(prep.mean), 1, 1)
    holder = type("TransformInput", (), {"transform_input": True})()
    at0, at1 = model_class._transform_input(holder, (pixels - mean) / std).flatten(1).unbind(0)
    # transform_input(normalise(p)) is affine in p: (p - m') / s' with s' = 1 / slope, m' = -at0 * s'.
    new_std = 1.0 / (at1 - at0)
    new_mean = -at0 * new_std
    return PretrainedCfg(
        prep.input_size, tuple(round(float(v), 6) for v in new_mean), tuple(round(float(v), 6) for v in new_std)
    )


def library_preprocessing(spec: BackboneSpec, weights: str) -> PretrainedCfg:
    """Normalisation and native input size for ``spec`` from its library's own metadata."""
    if weights == PACKAGED and spec.packaged_cfg:
        return _timm_cfg(spec.packaged_cfg)
    if spec.library == "timm":
        return _timm_cfg(spec.arch)
    prep = _torchvision_cfg(spec.arch)
    if spec.options.get("transform_input"):
        prep = _fold_transform_input(spec, prep)
    return prep
