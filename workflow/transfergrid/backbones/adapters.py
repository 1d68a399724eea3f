"""Family adapters: how one family of networks is stripped of its ImageNet classifier, run up to
its last feature map, pooled, and split into stages. Adapters are small, stateless objects; the
registry names them (``ADAPTERS``) and unregistered models get one picked from their class
(``adapter_for``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .metadata import library_preprocessing
from .spec import BackboneSpec
from .stages import (
    clean_stages,
    generic_stages,
    has_params,
    output_resolutions,
    spatial_mean,
    stages_covering,
)


def _strip_sequential(module: nn.Sequential) -> bool:
    """Replace the last layer with parameters (the class scores) of a Sequential by Identity."""
    for index in reversed(range(len(module))):
        if has_params(module[index]):
            if not isinstance(module[index], (nn.Linear, nn.Conv2d)):
                return False
            module[index] = nn.Identity()
            return True
    return False


_CLASSIFIER_ATTRS = ("fc", "classifier", "head", "heads")


def _strip_classifier(net: nn.Module) -> nn.Module:
    """Replace the ImageNet classifier by Identity; the transfer head is attached separately.

    Only the final class-score layer goes: FC layers before it (VGG, MobileNetV3) stay in the base.
    """
    if hasattr(net, "reset_classifier"):  # timm
        net.reset_classifier(0)
        return net
    for attr in _CLASSIFIER_ATTRS:
        module = getattr(net, attr, None)
        if isinstance(module, nn.Linear):
            setattr(net, attr, nn.Identity())
            return net
        if isinstance(module, nn.Sequential) and _strip_sequential(module):
            return net
    raise ValueError(f"cannot find the classifier of {type(net).__name__}")


# ----------------------------------------------------------------------------------------------
# Family adapters


@dataclass(frozen=True)
class Adapter:
    """How one family of networks is stripped, run, pooled and split into stages.

    Methods take the stripped library model ``net``; adapters hold no per-model state.
    """

    probe_size = 64  # input size of the shape probe that measures the feature sizes

    def build_kwargs(self, spec: BackboneSpec, loading: bool) -> dict:
        """Extra keyword arguments for the library's model constructor."""
        # torchvision models with a costly custom init skip it when weights are loaded over them.
        return {"init_weights": not loading} if spec.options.get("init_weights") else {}

    def strip(self, net: nn.Module) -> None:
        _strip_classifier(net)

    def stages(self, net: nn.Module) -> tuple[tuple[str, ...], ...]:
        return generic_stages(net)

    def forward_features(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def features_and_aux(self, net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.forward_features(net, x), None

    def pool(self, net: nn.Module, fmap: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def global_average(self, net: nn.Module, fmap: torch.Tensor) -> torch.Tensor:
        return spatial_mean(fmap)

    def aux_features(self, net: nn.Module) -> int | None:
        return None

    def dims(self, backbone: nn.Module, spec: BackboneSpec) -> tuple[int, int]:
        """(num_features, feature_channels), measured by one small forward pass."""
        fmap = backbone._probe(self.probe_size)
        return int(self.pool(backbone.net, fmap).shape[1]), int(self.global_average(backbone.net, fmap).shape[1])


@dataclass(frozen=True)
class ResNetAdapter(Adapter):
    """torchvision ResNet / ResNeXt / Wide ResNet: stem (conv1, bn1), then layer1..layer4."""

    def stages(self, net):
        return (("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",))

    def forward_features(self, net, x):
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        return net.layer4(net.layer3(net.layer2(net.layer1(x))))

    def pool(self, net, fmap):
        return torch.flatten(net.avgpool(fmap), 1)


@dataclass(frozen=True)
class FeaturesSequentialAdapter(Adapter):
    """torchvision models built as ``features`` -> pooling -> ``classifier`` (VGG, AlexNet,
    MobileNetV2/V3, EfficientNet, ConvNeXt).

    ``pool`` is everything of the native forward after ``features`` except the final class-score
    layer: VGG's two 4096-wide FC layers, MobileNetV3's pre-logits Linear, ConvNeXt's LayerNorm,
    and the native dropout. Stages split ``features`` by ``grouping``:

    * ``maxpool``: a stage ends at each MaxPool2d (VGG's five conv blocks, AlexNet's three);
    * ``children``: each child is a stage (EfficientNet: stem, its seven MBConv stages, head conv);
    * ``resolution``: the stem alone, then runs of children with the same output resolution
      (MobileNet, ConvNeXt: a downsampling layer opens the stage it feeds).

    The classifier's remaining layers with parameters form one last stage.
    """

    grouping: str = "resolution"
    flatten: bool = True  # flatten after pooling (ConvNeXt's classifier flattens itself)

    def stages(self, net):
        children = list(net.features.named_children())
        if self.grouping == "children":
            groups = [[f"features.{name}"] for name, _ in children]
        elif self.grouping == "maxpool":
            groups, current = [], []
            for name, child in children:
                current.append(f"features.{name}")
                if isinstance(child, nn.MaxPool2d):
                    groups.append(current)
                    current = []
            groups.append(current)
        elif self.grouping == "resolution":
            sizes = output_resolutions(net.features, self.probe_size)
            groups = []
            for index, (name, _) in enumerate(children):
                if index <= 1 or sizes[name] != sizes[children[index - 1][0]]:
                    groups.append([])
                groups[-1].append(f"features.{name}")
        else:
            raise ValueError(f"unknown stage grouping {self.grouping!r}")
        classifier = [f"classifier.{name}" for name, child in net.classifier.named_children() if has_params(child)]
        return clean_stages(net, [*groups, classifier])

    def forward_features(self, net, x):
        return net.features(x)

    def pool(self, net, fmap):
        avgpool = getattr(net, "avgpool", None)
        x = avgpool(fmap) if avgpool is not None else nn.functional.adaptive_avg_pool2d(fmap, 1)
        if self.flatten:
            x = torch.flatten(x, 1)
        return net.classifier(x)


@dataclass(frozen=True)
class InceptionAdapter(Adapter):
    """torchvision Inception v3, built with its auxiliary classifier and without transform_input.

    Stages are its resolution blocks: stem convs, the 3b/4a convs, Mixed_5*, Mixed_6* together
    with the AuxLogits branch that hangs off Mixed_6e, Mixed_7*. In training mode the aux branch
    runs (minus its fc) when Mixed_6e's map is large enough for it (inputs of about 299 px).
    """

    probe_size = 80
    _BLOCKS = (
        ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1"),
        ("Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2"),
        ("Mixed_5b", "Mixed_5c", "Mixed_5d"),
        ("Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"),
        ("Mixed_7a", "Mixed_7b", "Mixed_7c"),
    )
    _AUX_AFTER = "Mixed_6e"
    # InceptionAux runs avg_pool2d(kernel 5, stride 3) and then a 5x5 conv: it needs a 17 px map.
    _AUX_MIN_MAP = 17

    def build_kwargs(self, spec, loading):
        # torchvision skips its (truncated-normal) init when it loads weights; so do we.
        return {"aux_logits": True, "transform_input": False, "init_weights": not loading}

    def strip(self, net):
        net.fc = nn.Identity()
        net.AuxLogits.fc = nn.Identity()

    def stages(self, net):
        stages = [list(block) for block in self._BLOCKS]
        stages[3].append("AuxLogits")
        return clean_stages(net, stages)

    def features_and_aux(self, net, x):
        aux = None
        for block in self._BLOCKS:
            for name in block:
                x = getattr(net, name)(x)
                if name == self._AUX_AFTER and net.training and min(x.shape[-2:]) >= self._AUX_MIN_MAP:
                    aux = net.AuxLogits(x)
        return x, aux

    def forward_features(self, net, x):
        for block in self._BLOCKS:
            for name in block:
                x = getattr(net, name)(x)
        return x

    def pool(self, net, fmap):
        return torch.flatten(net.dropout(net.avgpool(fmap)), 1)

    def aux_features(self, net):
        return net.AuxLogits.conv1.conv.out_channels


@dataclass(frozen=True)
class ViTAdapter(Adapter):
    """torchvision VisionTransformer, at its native patch grid only.

    Feature map = the token sequence after the final LayerNorm; ``pool`` takes the class token
    (through the pre-logits layer when the model has one); ``global_average`` averages the patch
    tokens. Stages: patch projection + class token + position embedding, each encoder layer, the
    final LayerNorm.
    """

    def stages(self, net):
        stem = ("conv_proj", "class_token", "encoder.pos_embedding")
        layers = [(f"encoder.layers.{name}",) for name, _ in net.encoder.layers.named_children()]
        heads = tuple(f"heads.{name}" for name, _ in net.heads.named_children())  # pre-logits, if any
        return clean_stages(net, [stem, *layers, ("encoder.ln",), heads])

    def forward_features(self, net, x):
        x = net._process_input(x)
        x = torch.cat([net.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return net.encoder(x)

    def pool(self, net, fmap):
        return net.heads(fmap[:, 0])

    def global_average(self, net, fmap):
        return fmap[:, 1:].mean(dim=1)

    def dims(self, backbone, spec):
        net = backbone.net
        return int(net.representation_size or net.hidden_dim), int(net.hidden_dim)


@dataclass(frozen=True)
class GenericTorchvisionAdapter(Adapter):
    """Any other torchvision classifier: the forward pass with the classifier stripped.

    The "feature map" is the native pooled vector (models such as DenseNet or ShuffleNet pool in
    functional code), so ``pool`` and ``global_average`` pass it through. Stages are the top-level
    children, with ``features``/``trunk_output``/``layers``-like containers expanded; auxiliary
    classifiers (GoogLeNet) join the last stage.
    """

    def forward_features(self, net, x):
        out = net(x)
        return out[0] if isinstance(out, tuple) else out  # GoogLeNet's training outputs

    def pool(self, net, fmap):
        return spatial_mean(fmap)

    def dims(self, backbone, spec):
        size = spec.pretrained_cfg.input_size if spec.pretrained_cfg else library_preprocessing(spec, "none").input_size
        fmap = backbone._probe(size)
        return int(fmap.shape[1]), int(fmap.shape[1])


@dataclass(frozen=True)
class TimmAdapter(Adapter):
    """Any timm model: ``forward_features`` / ``forward_head(pre_logits=True)``.

    Stages come from timm's own coarse ``group_matcher`` (the groups timm uses for layer-wise
    learning-rate decay: stem, each stage/block, the final norm or head conv), written as the
    fewest module names that cover each group.
    """

    def strip(self, net):
        net.reset_classifier(0)

    def stages(self, net):
        try:
            from timm.models import group_parameters

            groups = group_parameters(net, net.group_matcher(coarse=True))
        except (AttributeError, NotImplementedError, TypeError):
            return generic_stages(net)
        stage_of = {name: index for index, names in enumerate(groups.values()) for name in names}
        return stages_covering(net, stage_of, len(groups))

    def forward_features(self, net, x):
        return net.forward_features(x)

    def pool(self, net, fmap):
        return net.forward_head(fmap, pre_logits=True)

    def global_average(self, net, fmap):
        if fmap.ndim == 3:  # tokens: average the patch tokens, not the class/register tokens
            return fmap[:, getattr(net, "num_prefix_tokens", 0) :].mean(dim=1)
        return spatial_mean(fmap, channels_last=str(getattr(net, "output_fmt", "NCHW")).endswith("NHWC"))

    def dims(self, backbone, spec):
        net = backbone.net
        return int(getattr(net, "head_hidden_size", None) or net.num_features), int(net.num_features)


def _torchvision_adapter(net: nn.Module) -> Adapter:
    """The adapter of a torchvision model, picked from its class."""
    from torchvision import models

    if isinstance(net, models.ResNet):
        return ResNetAdapter()
    if isinstance(net, models.Inception3):
        return InceptionAdapter()
    if isinstance(net, models.VisionTransformer):
        return ViTAdapter()
    if isinstance(net, (models.VGG, models.AlexNet)):
        return FeaturesSequentialAdapter("maxpool")
    if isinstance(net, models.EfficientNet):
        return FeaturesSequentialAdapter("children")
    if isinstance(net, models.ConvNeXt):
        return FeaturesSequentialAdapter("resolution", flatten=False)
    if isinstance(net, (models.MobileNetV2, models.MobileNetV3)):
        return FeaturesSequentialAdapter("resolution")
    return GenericTorchvisionAdapter()


# Registry names of the family adapters (``BackboneSpec.adapter``) and their classes.
ADAPTERS: dict[str, type[Adapter]] = {
    "resnet": ResNetAdapter,
    "features": FeaturesSequentialAdapter,
    "inception": InceptionAdapter,
    "vit": ViTAdapter,
    "generic": GenericTorchvisionAdapter,
    "timm": TimmAdapter,
}


def adapter_for(spec: BackboneSpec, net: nn.Module) -> Adapter:
    """The registry's adapter of ``spec``, or one picked from the built model's class."""
    if spec.adapter is not None:
        return ADAPTERS[spec.adapter](**spec.adapter_options)
    if spec.library == "timm":
        return TimmAdapter()
    return _torchvision_adapter(net)
