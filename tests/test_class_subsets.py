"""`datasets.<name>.classes`: a class subset on every source kind, by name or label index, with
labels renumbered in the given order and max_per_class applied to the classes kept."""

import json
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from sklearn.datasets import load_digits

from transfergrid.config import validate_config
from transfergrid.errors import ConfigError, DataError
from transfergrid.io import read_manifest
from transfergrid.sources import build_dataset
from transfergrid.split import make_split

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
QUIET = lambda message: None  # noqa: E731


def outputs(out_dir: Path):
    """(manifest, classes.json) as written to disk."""
    return read_manifest(out_dir / "manifest.csv"), json.loads((out_dir / "classes.json").read_text())


def labels_by_class(manifest) -> dict[str, set[int]]:
    return {name: set(group["label"]) for name, group in manifest.groupby("class_name")}


# --------------------------------------------------------------------------- builtin


def test_builtin_digits_5_6_7_become_labels_0_1_2(tmp_path):
    info = build_dataset("d", {"source": "builtin", "name": "digits", "classes": [5, 6, 7]}, tmp_path, log=QUIET)
    manifest, on_disk = outputs(tmp_path)
    target = load_digits().target
    assert info == on_disk and info["classes"] == ["5", "6", "7"]
    assert info["counts"] == {str(d): int((target == d).sum()) for d in (5, 6, 7)}
    assert info["num_images"] == len(manifest) == sum(info["counts"].values())
    assert (manifest["label"] == manifest["class_name"].astype(int) - 5).all()
    # Each written image is the digit its label says: the file name is its index in load_digits.
    digits = load_digits()
    for path, label in zip(manifest["path"][::25], manifest["label"][::25]):
        index = int(Path(path).stem)
        assert target[index] == label + 5
        expected = np.rint(digits.images[index] * (255.0 / 16.0)).astype(np.uint8)
        assert np.array_equal(np.asarray(Image.open(tmp_path / path)), expected)
    # The classes left out are never written.
    assert sorted(p.name for p in (tmp_path / "images" / "all").iterdir()) == ["5", "6", "7"]
    split = make_split(manifest, 0.2, 0.2, seed=0)
    assert sorted(split["label"].unique()) == [0, 1, 2]


def test_names_and_indices_mix_in_the_given_order(tmp_path):
    info = build_dataset("d", {"source": "builtin", "name": "digits", "classes": ["7", 2, "3"]}, tmp_path, log=QUIET)
    manifest, _ = outputs(tmp_path)
    assert info["classes"] == ["7", "2", "3"] and list(info["counts"]) == ["7", "2", "3"]
    assert labels_by_class(manifest) == {"7": {0}, "2": {1}, "3": {2}}


def test_max_per_class_applies_to_the_classes_kept_with_the_same_picks(tmp_path):
    spec = {"source": "builtin", "name": "digits", "max_per_class": 4, "seed": 3}
    build_dataset("d", spec, tmp_path / "all", log=QUIET)
    info = build_dataset("d", {**spec, "classes": [1, 0]}, tmp_path / "subset", log=QUIET)
    every, _ = outputs(tmp_path / "all")
    subset, _ = outputs(tmp_path / "subset")
    assert info["counts"] == {"1": 4, "0": 4} and len(subset) == 8
    assert labels_by_class(subset) == {"1": {0}, "0": {1}}
    # The seeded pick of a class does not depend on which other classes are kept.
    kept = every[every["class_name"].isin(["0", "1"])]
    assert sorted(subset["path"]) == sorted(kept["path"])


# --------------------------------------------------------------------------- folder and url


def test_folder_subset_by_names_in_a_custom_order(tmp_path, make_image_tree):
    make_image_tree(tmp_path / "data", {"cat": 2, "dog": 3, "emu": 1, "fox": 2})
    (tmp_path / "data" / "yak").mkdir()  # an empty class folder that is not asked for is never read
    spec = {"source": "folder", "path": str(tmp_path / "data"), "classes": ["fox", "cat", "dog"]}
    info = build_dataset("pets", spec, tmp_path / "out", log=QUIET)
    manifest, _ = outputs(tmp_path / "out")
    assert info["classes"] == ["fox", "cat", "dog"] and info["counts"] == {"fox": 2, "cat": 2, "dog": 3}
    assert labels_by_class(manifest) == {"fox": {0}, "cat": {1}, "dog": {2}}
    assert all(Path(p).parent.name == name for p, name in zip(manifest["path"], manifest["class_name"]))


def test_presplit_folder_subset_with_max_per_class(tmp_path, make_image_tree):
    layout = {"train": {"a": 4, "b": 4, "c": 4}, "val": {"a": 2, "b": 2, "c": 2}, "test": {"a": 1, "b": 1, "c": 1}}
    make_image_tree(tmp_path / "data", layout, mode="L")
    spec = {"source": "folder", "path": str(tmp_path / "data"), "classes": ["c", 0], "max_per_class": 3}
    info = build_dataset("s", spec, tmp_path / "out", log=QUIET)
    manifest, _ = outputs(tmp_path / "out")
    assert info["presplit"] and info["classes"] == ["c", "a"] and info["counts"] == {"c": 6, "a": 6}
    assert manifest.groupby(["split", "class_name"]).size().to_dict() == {
        (split, name): count for split, count in (("train", 3), ("val", 2), ("test", 1)) for name in ("a", "c")
    }
    assert labels_by_class(manifest) == {"c": {0}, "a": {1}}


def test_url_source_subset(tmp_path, make_image_tree):
    make_image_tree(tmp_path / "flowers", {"rose": 2, "tulip": 3, "iris": 1}, ext="jpg")
    archive = tmp_path / "flowers.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted((tmp_path / "flowers").rglob("*")):
            zf.write(path, path.relative_to(tmp_path).as_posix())
    spec = {"source": "url", "url": "http://unused.invalid/flowers.zip", "sha256": "0" * 64, "classes": ["tulip", 1]}
    info = build_dataset("f", spec, tmp_path / "out", archive=archive, log=QUIET)
    assert info["classes"] == ["tulip", "rose"] and info["counts"] == {"tulip": 3, "rose": 2}


# --------------------------------------------------------------------------- torchvision


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


@pytest.fixture
def tiny_mnist_root(tmp_path) -> Path:
    """torchvision's raw MNIST layout (root/MNIST/raw), two images per digit in each split; the
    pixels of an image hold its digit, so a test can tell which image a PNG came from."""
    raw = tmp_path / "tv" / "MNIST" / "raw"
    labels = np.repeat(np.arange(10), 2)
    for prefix in ("train", "t10k"):
        images = np.broadcast_to((labels * 20 + 10).astype(np.uint8)[:, None, None], (len(labels), 28, 28))
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return tmp_path / "tv"


def test_torchvision_subset_by_name_and_index(tmp_path, tiny_mnist_root):
    spec = {
        "source": "torchvision",
        "name": "MNIST",
        "root": str(tiny_mnist_root),
        "download": False,
        "classes": ["7 - seven", 3],
    }
    info = build_dataset("mnist", spec, tmp_path / "out", log=QUIET)
    manifest, _ = outputs(tmp_path / "out")
    assert info["classes"] == ["7 - seven", "3 - three"] and info["counts"] == {"7 - seven": 4, "3 - three": 4}
    assert labels_by_class(manifest) == {"7 - seven": {0}, "3 - three": {1}}
    assert manifest["split"].value_counts().to_dict() == {"train": 4, "test": 4}
    for path, label in zip(manifest["path"], manifest["label"]):
        digit = (7, 3)[label]
        assert np.asarray(Image.open(tmp_path / "out" / path))[0, 0] == digit * 20 + 10


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "classes, expected",
    [
        (
            [5, "cat"],
            r"^datasets\.d\.classes: unknown class 'cat'; classes: \['0', '1', .*'9'\] \(or label indices 0\.\.9\)$",
        ),
        ([5, 10], r"^datasets\.d\.classes: unknown class 10; classes: "),
        ([3], r"^datasets\.d\.classes: a classifier needs at least 2 classes, got \[3\]$"),
        ([3, "3"], r"^datasets\.d\.classes: a classifier needs at least 2 classes, got \[3, '3'\]$"),
        ([], r"^datasets\.d\.classes: a classifier needs at least 2 classes"),
    ],
)
def test_bad_subsets_are_one_line_data_errors_naming_the_key(tmp_path, classes, expected):
    with pytest.raises(DataError, match=expected) as error:
        build_dataset("d", {"source": "builtin", "name": "digits", "classes": classes}, tmp_path, log=QUIET)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "manifest.csv").exists()


def test_unknown_folder_class_lists_the_folder_classes(tmp_path, make_image_tree):
    make_image_tree(tmp_path / "data", {"cat": 1, "dog": 1})
    spec = {"source": "folder", "path": str(tmp_path / "data"), "classes": ["cat", "cow"]}
    with pytest.raises(DataError, match=r"^datasets\.pets\.classes: unknown class 'cow'; classes: \['cat', 'dog'\]"):
        build_dataset("pets", spec, tmp_path / "out", log=QUIET)


@pytest.mark.parametrize("classes", ["5,6", [5, True], [5, {"a": 1}], [5, 6.0]])
def test_a_subset_that_is_not_a_list_of_names_or_indices_is_a_config_error(tmp_path, classes):
    with pytest.raises(ConfigError, match=r"^datasets\.d\.classes must be a list of class names or label indices"):
        build_dataset("d", {"source": "builtin", "name": "digits", "classes": classes}, tmp_path, log=QUIET)


def test_schema_has_classes_default_null_and_refuses_a_single_class():
    config = validate_config(yaml.safe_load((ROOT / "config.yaml").read_text()), SCHEMA)
    assert all(spec["classes"] is None for spec in config["datasets"].values())
    subset = {"datasets": {"digits": {"source": "builtin", "name": "digits", "classes": ["5", 6, 7]}}}
    assert validate_config(subset, SCHEMA)["datasets"]["digits"]["classes"] == ["5", 6, 7]
    for bad in ([5], [5, 6.5], "5"):
        with pytest.raises(ConfigError, match=r"datasets\.digits\.classes") as error:
            validate_config({"datasets": {"digits": {"source": "builtin", "name": "digits", "classes": bad}}}, SCHEMA)
        assert "\n" not in str(error.value)
