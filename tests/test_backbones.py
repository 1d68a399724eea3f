"""The backbone registry: every entry builds, trains one step and splits into disjoint stages;
preprocessing is the libraries' own metadata; library state dicts load with or without their
ImageNet classifier."""

import pytest
import timm
import torch
import torchvision
from torch import nn

from transfergrid.backbones import BACKBONES, PretrainedCfg, native_preprocessing, resolve_backbone
from transfergrid.backbones.adapters import (
    FeaturesSequentialAdapter,
    GenericTorchvisionAdapter,
    InceptionAdapter,
    ResNetAdapter,
    TimmAdapter,
    ViTAdapter,
    adapter_for,
)
from transfergrid.backbones.build import build_backbone
from transfergrid.backbones.metadata import library_preprocessing
from transfergrid.backbones.registry import stage_count
from transfergrid.naming import HUB, PACKAGED, SCRATCH

# Smallest sizes each net runs at (inception's stem needs 75 px; ViT only runs on its patch grid).
SIZES = {"inception_v3": 80, "vit_b_16": 224}
DEFAULT_SIZE = 32
GENERIC = {"shufflenet_v2_x0_5": GenericTorchvisionAdapter, "resnet10t": TimmAdapter}
# Auxiliary classifiers get no gradient from the main loss.
AUX_MODULES = ("AuxLogits", "aux1", "aux2")
REQUIRED = [
    "resnet18",
    "resnet50",
    "vgg16",
    "vgg16_bn",
    "inception_v3",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "convnext_tiny",
    "vit_b_16",
    "xception",
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
]


@pytest.fixture(autouse=True)
def _deterministic():
    torch.set_num_threads(2)
    torch.manual_seed(0)


def train_one_step(backbone, size, aux_weight=None):
    """Forward in train mode, CE loss on a fresh Linear head, backward, one SGD step."""
    head = nn.Linear(backbone.num_features, 3)
    if aux_weight is not None:
        aux_head = nn.Linear(backbone.aux_features, 3)
    backbone.train()
    images, labels = torch.randn(2, 3, size, size), torch.tensor([0, 2])
    fmap = backbone.forward_features(images)
    assert backbone.global_average(fmap).shape == (2, backbone.feature_channels)
    if aux_weight is None:
        pooled, aux = backbone.pool(fmap), None
    else:
        pooled, aux = backbone.forward_with_aux(images)
    assert pooled.shape == (2, backbone.num_features)
    loss = nn.functional.cross_entropy(head(pooled), labels)
    if aux is not None:
        loss = loss + aux_weight * nn.functional.cross_entropy(aux_head(aux), labels)
    before = {n: p.detach().clone() for n, p in backbone.named_parameters()}
    optimizer = torch.optim.SGD([*backbone.parameters(), *head.parameters()], lr=0.1)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    return before, aux


def check_stages(backbone):
    """Stages: at least two, each with parameters, pairwise disjoint, together covering the base."""
    stages = backbone.stage_modules()
    assert len(stages) == len(backbone.stage_names) == backbone.num_stages >= 2
    seen = set()
    for names, stage in zip(backbone.stage_names, stages):
        ids = {id(p) for module in stage for p in module.parameters()}
        assert ids, f"stage {names} has no parameters"
        assert not ids & seen, f"stage {names} overlaps an earlier stage"
        seen |= ids
    stageless = [n for n, p in backbone.named_parameters() if id(p) not in seen]
    assert stageless == []
    for stage in stages:  # freeze:k with k = number of stages freezes everything
        for module in stage:
            module.requires_grad_(False)
    assert sum(p.numel() for p in backbone.parameters() if p.requires_grad) == 0


def check_gradients(backbone, before):
    trained = [n for n, p in backbone.named_parameters() if p.grad is not None]
    untrained = {n for n, _ in backbone.named_parameters()} - set(trained)
    assert all(n.startswith(tuple(f"net.{m}." for m in AUX_MODULES)) for n in untrained), sorted(untrained)[:5]
    after = dict(backbone.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in trained)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_registered_backbone_trains_one_step(name):
    backbone = build_backbone(resolve_backbone(name))
    before, _ = train_one_step(backbone, SIZES.get(name, DEFAULT_SIZE))
    check_gradients(backbone, before)
    check_stages(backbone)
    assert all(key.startswith("net.") for key in backbone.state_dict())


@pytest.mark.parametrize("name", sorted(GENERIC))
def test_generic_name_resolves_and_trains_one_step(name):
    spec = resolve_backbone(name)
    assert name not in BACKBONES and spec.arch == name
    backbone = build_backbone(spec)
    assert isinstance(backbone.adapter, GENERIC[name])
    before, _ = train_one_step(backbone, 64)
    check_gradients(backbone, before)
    check_stages(backbone)


def test_required_backbones_are_registered_with_their_family_adapter():
    assert set(REQUIRED) <= set(BACKBONES)
    families = {
        "resnet50": ResNetAdapter,
        "vgg16_bn": FeaturesSequentialAdapter,
        "inception_v3": InceptionAdapter,
        "convnext_tiny": FeaturesSequentialAdapter,
        "vit_b_16": ViTAdapter,
        "xception": TimmAdapter,
        "efficientnet_lite1": TimmAdapter,
    }
    for name, adapter in families.items():
        assert isinstance(adapter_for(BACKBONES[name], None), adapter)
    assert BACKBONES["xception"].arch in timm.list_models("*xception*")


def test_unknown_name_raises_key_error():
    with pytest.raises(KeyError, match="no_such_net"):
        resolve_backbone("no_such_net")


# ----------------------------------------------------------------------------------------------
# Family specifics


def test_inception_aux_branch_runs_in_training_only():
    backbone = build_backbone(resolve_backbone("inception_v3"))
    assert backbone.aux_features == 768
    assert native_preprocessing(backbone.spec, HUB).input_size == 299
    before, aux = train_one_step(backbone, 299, aux_weight=0.4)
    assert aux.shape == (2, 768)
    check_gradients(backbone, before)
    assert all(p.grad is not None for p in backbone.net.AuxLogits.parameters())
    backbone.eval()
    with torch.no_grad():
        pooled, aux = backbone.forward_with_aux(torch.randn(1, 3, 299, 299))
    assert aux is None and pooled.shape == (1, 2048)


def test_other_backbones_have_no_aux_vector():
    backbone = build_backbone(resolve_backbone("resnet18")).train()
    pooled, aux = backbone.forward_with_aux(torch.randn(2, 3, 32, 32))
    assert aux is None and backbone.aux_features is None and pooled.shape == (2, 512)


def test_vgg_pools_through_its_fc_layers_and_averages_the_conv_map():
    backbone = build_backbone(resolve_backbone("vgg16")).eval()
    fmap = backbone.forward_features(torch.randn(1, 3, 32, 32))
    assert (backbone.num_features, backbone.feature_channels) == (4096, 512)
    assert torch.allclose(backbone.global_average(fmap), fmap.mean(dim=(2, 3)))
    assert backbone.num_stages == 6 and backbone.stage_names[-1] == ("classifier.0", "classifier.3")


def test_vit_pools_the_class_token_and_averages_the_patch_tokens():
    backbone = build_backbone(resolve_backbone("vit_b_16")).eval()
    with torch.no_grad():
        tokens = backbone.forward_features(torch.randn(1, 3, 224, 224))
        assert tokens.shape == (1, 197, 768)
        assert torch.equal(backbone.pool(tokens), tokens[:, 0])
        assert torch.allclose(backbone.global_average(tokens), tokens[:, 1:].mean(1))
    assert backbone.stage_names[0] == ("conv_proj", "class_token", "encoder.pos_embedding")


# ----------------------------------------------------------------------------------------------
# Preprocessing comes from the libraries


def _torchvision_metadata(arch):
    transforms = torchvision.models.get_model_weights(arch).DEFAULT.transforms()
    return PretrainedCfg(transforms.crop_size[0], tuple(transforms.mean), tuple(transforms.std))


def _timm_metadata(tag):
    cfg = timm.models.get_pretrained_cfg(tag)
    return PretrainedCfg(cfg.input_size[-1], tuple(cfg.mean), tuple(cfg.std))


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_preprocessing_is_the_library_metadata(name):
    spec = BACKBONES[name]
    prep = native_preprocessing(spec, HUB)
    assert native_preprocessing(spec, SCRATCH) == prep == native_preprocessing(spec, "file:x.pt")
    if spec.library == "timm":
        assert prep == _timm_metadata(spec.arch)
    elif spec.options.get("transform_input"):
        assert prep.input_size == _torchvision_metadata(spec.arch).input_size
    else:
        assert prep == _torchvision_metadata(spec.arch)
    if spec.packaged_weights:
        assert native_preprocessing(spec, PACKAGED) == _timm_metadata(spec.packaged_cfg)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_registry_data_matches_the_libraries_and_the_built_network(name):
    """The registry holds pretrained configs and stage counts as data (so parsing needs no torch);
    they must equal what the libraries say and what the built network has."""
    spec = BACKBONES[name]
    for weights in (HUB, PACKAGED) if spec.packaged_weights else (HUB,):
        assert native_preprocessing(spec, weights) == library_preprocessing(spec, weights)
    assert stage_count(spec) == build_backbone(spec).num_stages


@pytest.mark.parametrize(
    "name,model_class", [("inception_v3", torchvision.models.Inception3), ("googlenet", torchvision.models.GoogLeNet)]
)
def test_transform_input_is_folded_into_the_normalisation(name, model_class):
    """Built with transform_input=False, our normalisation equals torchvision's metadata
    normalisation followed by the model's transform_input step."""
    meta, prep = _torchvision_metadata(name), native_preprocessing(BACKBONES[name], HUB)
    pixels = torch.rand(2, 3, 8, 8)

    def normalise(p):
        return (pixels - torch.tensor(p.mean).view(1, 3, 1, 1)) / torch.tensor(p.std).view(1, 3, 1, 1)

    holder = type("Holder", (), {"transform_input": True})()
    assert torch.allclose(normalise(prep), model_class._transform_input(holder, normalise(meta)), atol=1e-5)
    if name == "inception_v3":  # timm's port of the same weights documents the same normalisation
        assert prep == _timm_metadata("inception_v3.tv_in1k")


# ----------------------------------------------------------------------------------------------
# Loading library state dicts


def _library_state(name):
    spec = BACKBONES[name]
    if spec.library == "timm":
        return timm.create_model(spec.arch, pretrained=False).state_dict()
    kwargs = {"aux_logits": True, "init_weights": False} if name == "inception_v3" else {}
    return torchvision.models.get_model(spec.arch, weights=None, **kwargs).state_dict()


@pytest.mark.parametrize(
    "name,classifier_keys",
    [
        ("resnet18", {"fc.weight", "fc.bias"}),
        ("inception_v3", {"fc.weight", "AuxLogits.fc.weight"}),
        ("efficientnet_lite0", {"classifier.weight"}),
        ("mobilenet_v3_small", {"classifier.3.weight"}),
    ],
)
def test_library_state_dict_loads_with_or_without_its_classifier(name, classifier_keys):
    full = _library_state(name)
    assert classifier_keys <= set(full)
    backbone = build_backbone(BACKBONES[name], full)
    loaded = backbone.net.state_dict()
    assert set(full) - set(loaded) >= classifier_keys
    assert all(torch.equal(loaded[k], full[k]) for k in loaded)
    again = build_backbone(BACKBONES[name], loaded)  # the weights-file helper's backbone-only state
    assert all(torch.equal(again.net.state_dict()[k], loaded[k]) for k in loaded)


def test_state_dict_that_does_not_fit_raises_naming_the_keys():
    spec = BACKBONES["resnet18"]
    full = _library_state("resnet18")
    with pytest.raises(ValueError, match=r"bogus\.weight"):
        build_backbone(spec, {**full, "bogus.weight": torch.zeros(1)})
    missing = {k: v for k, v in full.items() if k != "layer1.0.conv1.weight"}
    with pytest.raises(ValueError, match=r"layer1\.0\.conv1\.weight"):
        build_backbone(spec, missing)
    with pytest.raises(ValueError, match=r"conv1\.weight"):
        build_backbone(spec, {**full, "conv1.weight": torch.zeros(3, 3)})
