"""Weight sources as files: slugs, `file:` checkpoint conversion, config checks, `pretrain:`."""

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from helpers import cell_config
from sklearn.datasets import load_digits

from transfergrid.backbones import resolve_backbone
from transfergrid.backbones.build import build_backbone
from transfergrid.config import validate_config
from transfergrid.errors import ConfigError, DataError
from transfergrid.grid import pretrain_job
from transfergrid.imagecache import write_cache
from transfergrid.model import build_model
from transfergrid.naming import file_source, weights_from_slug, weights_slug
from transfergrid.pretrain import pretrain_backbone, select_classes
from transfergrid.split import make_split
from transfergrid.weights import import_checkpoint

# The schema's defaults of a `pretrain.<name>` entry.
PRETRAIN_DEFAULTS = {
    "dataset": None,
    "classes": None,
    "fraction": 1.0,
    "epochs": None,
    "lr": None,
    "image_size": None,
    "seed": 0,
}

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
SPEC = resolve_backbone("resnet18")


def backbone_keys():
    return list(build_backbone(SPEC).net.state_dict())


def library_state(seed=0):
    """A torchvision resnet18 state dict, ImageNet classifier included."""
    torch.manual_seed(seed)
    return torchvision.models.resnet18(weights=None).state_dict()


def load_weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)


# ----------------------------------------------------------------------------------------------
# Slugs


def test_slugs_are_readable_path_segments_and_map_back():
    config = {
        "grid": {
            "backbones": [
                {
                    "name": "resnet18",
                    "weights": [
                        "none",
                        "imagenet",
                        "pretrain:digits04",
                        "file:/data/ckpt/my model.pt",
                        "file:/other/ckpt/my model.pt",
                    ],
                }
            ]
        }
    }
    assert [weights_slug(w) for w in ("none", "imagenet", "imagenet_pkg")] == ["none", "imagenet", "imagenet_pkg"]
    assert weights_slug("pretrain:digits04") == "pretrain-digits04"
    slug = weights_slug("file:/data/ckpt/my model.pt")
    assert re.fullmatch(r"file-my_model-[0-9a-f]{12}", slug)
    assert slug != weights_slug("file:/other/ckpt/my model.pt")
    for weights in config["grid"]["backbones"][0]["weights"]:
        slug = weights_slug(weights)
        assert re.fullmatch(r"[A-Za-z0-9_.-]+", slug) and weights_slug(slug) == slug
        assert weights_from_slug(config, "resnet18", slug) == weights
    assert file_source(config, slug) == "/other/ckpt/my model.pt"
    with pytest.raises(ConfigError, match="matches no file: source"):
        file_source(config, "file-gone-0123456789ab")


# ----------------------------------------------------------------------------------------------
# file:<path>


def _cell_checkpoint(state):
    """A transfergrid cell's model.pt whose backbone holds ``state``."""
    cell = cell_config(weights="none")
    model = build_model(cell, 3, None)
    model.backbone.net.load_state_dict({k: state[k] for k in backbone_keys()})
    return {"state_dict": model.state_dict(), "cell": cell.to_dict(), "classes": ["a", "b", "c"]}


LAYOUTS = {
    "plain": lambda s: s,
    "state_dict": lambda s: {"state_dict": s, "epoch": 3},
    "model": lambda s: {"model": s, "optimizer_name": "sgd"},
    "dataparallel": lambda s: {f"module.{k}": v for k, v in s.items()},
    "cell": _cell_checkpoint,
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_file_checkpoint_layouts_become_the_backbone_state(tmp_path, layout):
    state = library_state(seed=1)
    source = tmp_path / "in" / "ckpt.pt"
    source.parent.mkdir()
    torch.save(LAYOUTS[layout](state), source)
    out = tmp_path / "weights" / "resnet18" / f"{weights_slug(f'file:{source}')}.pt"
    import_checkpoint("resnet18", source, out, log=lambda _: None)
    saved = load_weights(out)
    assert saved["backbone"] == "resnet18" and saved["weights"] == f"file:{source}"
    assert list(saved["state_dict"]) == backbone_keys()  # the ImageNet classifier (fc) is dropped
    assert all(torch.equal(saved["state_dict"][k], state[k]) for k in saved["state_dict"])
    loaded = build_backbone(SPEC, saved["state_dict"])
    assert torch.equal(loaded.net.conv1.weight, state["conv1.weight"])


def test_a_pickled_module_is_refused_with_a_clear_error(tmp_path):
    source = tmp_path / "whole_model.pt"
    torch.save(torchvision.models.resnet18(weights=None), source)
    with pytest.raises(DataError) as error:
        import_checkpoint("resnet18", source, tmp_path / "out.pt")
    message = str(error.value)
    assert str(source) in message and "weights_only=True" in message and "torch.save(model.state_dict()" in message
    assert "\n" not in message and not (tmp_path / "out.pt").exists()


def test_missing_or_unreadable_files_are_errors_naming_the_path(tmp_path):
    with pytest.raises(DataError, match=re.escape(f"weights file '{tmp_path / 'nope.pt'}' does not exist")):
        import_checkpoint("resnet18", tmp_path / "nope.pt", tmp_path / "out.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint" * 8)
    with pytest.raises(DataError, match=r"garbage\.pt' is not a readable PyTorch checkpoint"):
        import_checkpoint("resnet18", garbage, tmp_path / "out.pt")


def test_a_checkpoint_of_another_architecture_does_not_fit(tmp_path):
    source = tmp_path / "r50.pt"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), source)
    with pytest.raises(DataError, match=r"does not fit backbone 'resnet18': .* shapes differ"):
        import_checkpoint("resnet18", source, tmp_path / "out.pt")
    cell = _cell_checkpoint(library_state())
    cell["cell"]["backbone"] = "resnet50"
    torch.save(cell, source)
    with pytest.raises(DataError, match="is a transfergrid cell of backbone 'resnet50', not 'resnet18'"):
        import_checkpoint("resnet18", source, tmp_path / "out.pt")
    torch.save({"optimizer": {"lr": torch.tensor(0.1)}, "epoch": 3}, source)
    with pytest.raises(DataError, match="no state dict found"):
        import_checkpoint("resnet18", source, tmp_path / "out.pt")


# ----------------------------------------------------------------------------------------------
# Config checks


def small_config(weights, pretrain=None, datasets=("digits",)):
    config = {
        "datasets": {d: {"source": "builtin", "name": "digits"} for d in datasets},
        "grid": {
            "datasets": [datasets[0]],
            "backbones": [{"name": "resnet18", "weights": list(weights)}],
            "strategies": ["full"],
        },
        "train": {
            "image_size": 32,
            "epochs": 2,
            "batch_size": 16,
            "augment": "none",
            "device": "cpu",
            "optimizer": {"lr": 0.05},
        },
    }
    if pretrain is not None:
        config["pretrain"] = pretrain
    return validate_config(config, SCHEMA)


def test_pretrain_entries_get_the_schema_defaults():
    config = small_config(["pretrain:digits04"], {"digits04": {"dataset": "digits", "classes": [0, 1, 2, 3, 4]}})
    assert config["pretrain"]["digits04"] == {**PRETRAIN_DEFAULTS, "dataset": "digits", "classes": [0, 1, 2, 3, 4]}
    bare = small_config(["pretrain:digits"])  # a bare dataset name: all classes, the defaults
    assert bare["pretrain"]["digits"] == {**PRETRAIN_DEFAULTS, "dataset": "digits"}


@pytest.mark.parametrize(
    "weights, pretrain, expected",
    [
        (
            ["pretrain:digitz"],
            {"digits04": {"dataset": "digits"}},
            "config key 'grid.backbones[0].weights[0]': unknown pretrain source 'digitz' (not in `pretrain` nor "
            "`datasets`); valid: ['pretrain:digits', 'pretrain:digits04']",
        ),
        (["none"], {"src": {"dataset": "nope"}}, "config key 'pretrain.src.dataset': unknown dataset 'nope'"),
        (
            ["none", "file:/no/such/ckpt.pt"],
            None,
            "config key 'grid.backbones[0].weights[1]': weights file '/no/such/ckpt.pt' does not exist",
        ),
    ],
)
def test_bad_weight_sources_fail_before_anything_runs(weights, pretrain, expected):
    with pytest.raises(ConfigError) as error:
        small_config(weights, pretrain)
    assert str(error.value).startswith(expected)


def test_class_subsets_by_name_or_index():
    names = [str(i) for i in range(10)]
    assert select_classes(names, None, "x") == list(range(10))
    assert select_classes(names, [4, "2", 0], "x") == [4, 2, 0]
    with pytest.raises(DataError, match=r"pretrain.s.classes': unknown class 'cat'; classes: \['0'"):
        select_classes(names, [0, "cat"], "config key 'pretrain.s.classes'")
    with pytest.raises(DataError, match="at least 2 classes"):
        select_classes(names, [3, "3"], "x")


# ----------------------------------------------------------------------------------------------
# pretrain:<name>


def write_digits_dataset(root: Path, size: int = 32, per_class: int = 20) -> dict:
    """Real digits as an image cache, split file and class list, like the workflow's own."""
    digits = load_digits()
    rows = np.concatenate([np.flatnonzero(digits.target == c)[:per_class] for c in range(10)])
    images = torch.from_numpy(np.rint(digits.images[rows] * (255 / 16)).astype(np.uint8))[:, None]
    images = torch.nn.functional.interpolate(images.float(), size=size, mode="bilinear").round().clamp(0, 255)
    labels = torch.as_tensor(digits.target[rows], dtype=torch.int64)
    root.mkdir(parents=True, exist_ok=True)
    paths = {"cache": root / f"{size}px.npy", "split": root / "split.csv", "classes": root / "classes.json"}
    write_cache(images.to(torch.uint8), labels, paths["cache"])
    manifest = pd.DataFrame({"label": labels.numpy(), "split": ""})
    make_split(manifest, 0.25, 0.25, 0).to_csv(paths["split"], index=False)
    paths["classes"].write_text(json.dumps({"classes": [str(c) for c in range(10)], "channels": 1}))
    return paths


def test_pretraining_makes_a_backbone_that_starts_a_target_with_its_own_head(tmp_path):
    config = small_config(["pretrain:digits04"], {"digits04": {"dataset": "digits", "classes": [0, 1, 2, 3, 4]}})
    job = pretrain_job(config, "resnet18", "digits04")
    settings = job.settings
    assert (settings.strategy, settings.head, settings.weights, settings.image_size, settings.epochs) == (
        "scratch",
        "linear",
        "none",
        32,
        2,
    )
    data = write_digits_dataset(tmp_path / "digits")
    out = tmp_path / "weights" / "resnet18" / "pretrain-digits04.pt"
    info = pretrain_backbone(job, data["cache"], data["split"], data["classes"], out, log=lambda _: None)

    split = pd.read_csv(data["split"])
    assert info["classes"] == ["0", "1", "2", "3", "4"]
    assert info["num_train"] == ((split.split == "train") & (split.label < 5)).sum()
    assert info["num_val"] == ((split.split == "val") & (split.label < 5)).sum()
    saved = load_weights(out)
    assert saved["weights"] == "pretrain:digits04" and saved["pretrain"]["best_epoch"] in (1, 2)
    state = saved["state_dict"]
    assert list(state) == backbone_keys()  # backbone only: no source head
    assert state["bn1.running_mean"].abs().sum() > 0  # it trained (BatchNorm statistics start at 0)

    target = build_model(cell_config(weights="pretrain:digits04"), 3, out)
    assert target.head.out_features == 3
    assert all(torch.equal(v, state[k]) for k, v in target.backbone.net.state_dict().items())
