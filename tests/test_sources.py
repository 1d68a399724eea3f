import gzip
import hashlib
import json
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transfergrid import sources
from transfergrid.downloads import download
from transfergrid.errors import ConfigError, DataError
from transfergrid.io import read_manifest
from transfergrid.sources import build_dataset


def _outputs(out_dir: Path):
    """(manifest DataFrame, classes.json dict) as written to disk."""
    return read_manifest(out_dir / "manifest.csv"), json.loads((out_dir / "classes.json").read_text())


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write a uint8 array in IDX format (gzip-compressed when the name ends in .gz)."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    (gzip.open if path.suffix == ".gz" else open)(path, "wb").write(data)
    return path


def _idx_dataset(directory: Path, prefix: str, labels: list[int], suffix: str = "") -> None:
    rng = np.random.default_rng(len(labels))
    write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (len(labels), 28, 28)))
    write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", np.array(labels))


# --------------------------------------------------------------------------- builtin


def test_builtin_digits_has_all_1797_images(tmp_path):
    from sklearn.datasets import load_digits

    info = build_dataset("digits", {"source": "builtin", "name": "digits"}, tmp_path)
    manifest, on_disk = _outputs(tmp_path)
    target = load_digits().target
    assert info == on_disk
    assert info["num_images"] == len(manifest) == 1797
    assert info["classes"] == [str(d) for d in range(10)]
    assert info["counts"] == {str(d): int(n) for d, n in enumerate(np.bincount(target))}
    assert info["presplit"] is False and info["channels"] == 1 and info["skipped"] == []
    assert set(manifest["split"]) == {""}
    assert (manifest["label"] == manifest["class_name"].astype(int)).all()
    first = Image.open(tmp_path / manifest["path"][0])
    assert manifest["path"][0].startswith("images/all/") and first.mode == "L" and first.size == (8, 8)


def test_max_per_class_is_deterministic_and_seeded(tmp_path):
    spec = {"source": "builtin", "name": "digits", "max_per_class": 5}
    info = build_dataset("d", spec, tmp_path / "a")
    build_dataset("d", spec, tmp_path / "b")
    build_dataset("d", {**spec, "seed": 1}, tmp_path / "c")
    picks = {run: list(read_manifest(tmp_path / run / "manifest.csv")["path"]) for run in "abc"}
    assert info["num_images"] == 50 and set(info["counts"].values()) == {5}
    assert picks["a"] == picks["b"] and picks["a"] != picks["c"]
    assert sorted(p.relative_to(tmp_path / "a").as_posix() for p in (tmp_path / "a/images").rglob("*.png")) == sorted(
        picks["a"]
    )


def test_unknown_builtin_lists_valid_names(tmp_path):
    with pytest.raises(DataError, match=r"digits.*fashion_mnist_debian"):
        build_dataset("x", {"source": "builtin", "name": "nope"}, tmp_path)


def test_fashion_mnist_debian_reads_idx_gz(tmp_path, monkeypatch):
    fake = tmp_path / "fashion-mnist"
    _idx_dataset(fake, "train", [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1], ".gz")
    _idx_dataset(fake, "t10k", [9, 8, 0], ".gz")
    monkeypatch.setattr(sources.builtin, "FASHION_MNIST_DEBIAN_DIR", fake)
    info = build_dataset("fm", {"source": "builtin", "name": "fashion_mnist_debian"}, tmp_path / "out")
    manifest, _ = _outputs(tmp_path / "out")
    assert info["presplit"] and info["num_images"] == 15 and info["channels"] == 1
    assert info["classes"] == sorted(sources.FASHION_MNIST_CLASSES)
    assert info["counts"]["T-shirt/top"] == 3 and info["counts"]["Ankle boot"] == 2
    assert manifest["split"].value_counts().to_dict() == {"train": 12, "test": 3}
    assert (tmp_path / "out/images/train/T-shirt_top").is_dir()  # "/" in a class name stays out of paths


def test_fashion_mnist_debian_missing_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(sources.builtin, "FASHION_MNIST_DEBIAN_DIR", tmp_path / "absent")
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        build_dataset("fm", {"source": "builtin", "name": "fashion_mnist_debian"}, tmp_path / "out")


@pytest.mark.skipif(not sources.FASHION_MNIST_DEBIAN_DIR.is_dir(), reason="Debian dataset-fashion-mnist not installed")
def test_fashion_mnist_debian_real_files(tmp_path):
    spec = {"source": "builtin", "name": "fashion_mnist_debian", "max_per_class": 2}
    info = build_dataset("fm", spec, tmp_path)
    manifest, _ = _outputs(tmp_path)
    assert info["num_images"] == 40 and set(info["counts"].values()) == {4}
    assert manifest.groupby("split").size().to_dict() == {"test": 20, "train": 20}
    assert Image.open(tmp_path / manifest["path"][0]).size == (28, 28)


# --------------------------------------------------------------------------- folder


def test_folder_flat_layout(tmp_path, make_image_tree):
    root = tmp_path / "data"
    make_image_tree(root, {"cat": 3, "dog": 2}, mode="RGB", ext="png")
    make_image_tree(root, {"dog": 2}, mode="L", ext="JPG")
    (root / "cat" / ".hidden.png").write_bytes(b"ignored: hidden")
    (root / "cat" / "notes.txt").write_text("ignored: not an image")
    (root / ".git").mkdir()
    info = build_dataset("pets", {"source": "folder", "path": str(root)}, tmp_path / "out")
    manifest, _ = _outputs(tmp_path / "out")
    assert info["classes"] == ["cat", "dog"] and info["counts"] == {"cat": 3, "dog": 4}
    assert info["presplit"] is False and info["channels"] == 3  # one RGB image makes it 3
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in manifest["path"])
    assert list(manifest["label"]) == [0, 0, 0, 1, 1, 1, 1]
    assert list((tmp_path / "out" / "images").iterdir()) == []


def test_folder_presplit_grayscale(tmp_path, make_image_tree):
    root = tmp_path / "data"
    make_image_tree(root, {"train": {"a": 2, "b": 2}, "val": {"a": 1}, "test": {"a": 1, "b": 1}}, mode="L")
    info = build_dataset("g", {"source": "folder", "path": str(root)}, tmp_path / "out")
    manifest, _ = _outputs(tmp_path / "out")
    assert info["presplit"] is True and info["channels"] == 1 and info["counts"] == {"a": 4, "b": 3}
    assert manifest.groupby("split").size().to_dict() == {"test": 2, "train": 4, "val": 1}


def test_folder_presplit_max_per_class_applies_per_split(tmp_path, make_image_tree):
    root = tmp_path / "data"
    make_image_tree(root, {"train": {"a": 4, "b": 3}, "val": {"a": 3, "b": 1}})
    info = build_dataset("g", {"source": "folder", "path": str(root), "max_per_class": 2}, tmp_path / "out")
    manifest, _ = _outputs(tmp_path / "out")
    assert manifest.groupby(["split", "class_name"]).size().to_dict() == {
        ("train", "a"): 2, ("train", "b"): 2, ("val", "a"): 2, ("val", "b"): 1,
    }  # fmt: skip
    assert info["num_images"] == 7


def test_folder_class_only_in_val_is_an_error(tmp_path, make_image_tree):
    root = tmp_path / "data"
    make_image_tree(root, {"train": {"a": 1}, "val": {"a": 1, "zebra": 1}})
    with pytest.raises(DataError, match="zebra"):
        build_dataset("g", {"source": "folder", "path": str(root)}, tmp_path / "out")


def test_folder_empty_class_names_the_directory(tmp_path, make_image_tree):
    root = tmp_path / "data"
    make_image_tree(root, {"a": 1})
    (root / "empty").mkdir()
    with pytest.raises(DataError, match=str(root / "empty")):
        build_dataset("g", {"source": "folder", "path": str(root)}, tmp_path / "out")


@pytest.mark.parametrize("setup", ["missing", "no-subdirs"])
def test_folder_without_classes_is_an_error(tmp_path, setup):
    root = tmp_path / "data"
    if setup == "no-subdirs":
        root.mkdir()
    with pytest.raises(DataError, match=str(root)):
        build_dataset("g", {"source": "folder", "path": str(root)}, tmp_path / "out")


def _tree_with_corrupt_file(root: Path, make_image_tree) -> Path:
    make_image_tree(root, {"a": 2, "b": 2})
    bad = root / "b" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return bad


def test_corrupt_file_fails_by_default_naming_it(tmp_path, make_image_tree):
    bad = _tree_with_corrupt_file(tmp_path / "data", make_image_tree)
    logged = []
    with pytest.raises(DataError) as info:
        build_dataset("c", {"source": "folder", "path": str(tmp_path / "data")}, tmp_path / "out", log=logged.append)
    assert str(bad) in str(info.value) and "1 unreadable" in str(info.value) and "\n" not in str(info.value)
    assert any(str(bad) in line for line in logged)
    assert not (tmp_path / "out" / "manifest.csv").exists()


def test_corrupt_file_skipped_and_recorded(tmp_path, make_image_tree):
    bad = _tree_with_corrupt_file(tmp_path / "data", make_image_tree)
    spec = {"source": "folder", "path": str(tmp_path / "data"), "on_corrupt": "skip"}
    info = build_dataset("c", spec, tmp_path / "out", log=lambda line: None)
    manifest, _ = _outputs(tmp_path / "out")
    assert info["skipped"] == [str(bad)] and info["counts"] == {"a": 2, "b": 2}
    assert str(bad) not in set(manifest["path"])


def test_truncated_png_is_detected(tmp_path, make_image_tree):
    (path,) = make_image_tree(tmp_path / "data", {"a": 1})
    make_image_tree(tmp_path / "data", {"b": 1})
    path.write_bytes(path.read_bytes()[:-30])  # header intact, pixel data cut
    spec = {"source": "folder", "path": str(tmp_path / "data"), "on_corrupt": "skip"}
    with pytest.raises(DataError, match="have no readable images"):
        build_dataset("c", spec, tmp_path / "out", log=lambda line: None)


# --------------------------------------------------------------------------- url


def _zip_tree(source: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(source.rglob("*")):
            zf.write(path, path.relative_to(source.parent).as_posix())
    return archive


def test_url_source_downloads_and_extracts(tmp_path, http_server, make_image_tree):
    www = tmp_path / "www"
    www.mkdir()
    make_image_tree(tmp_path / "flowers", {"rose": 2, "tulip": 3}, mode="RGB", ext="jpg")
    archive = _zip_tree(tmp_path / "flowers", www / "flowers.zip")
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    spec = {"source": "url", "url": f"{http_server(www)}/flowers.zip", "sha256": sha}
    downloaded = download(spec["url"], spec["sha256"], tmp_path / "dl" / "flowers.zip")
    out = tmp_path / "out"
    info = build_dataset("flowers", spec, out, archive=downloaded, log=lambda line: None)
    manifest, _ = _outputs(out)
    assert info["classes"] == ["rose", "tulip"] and info["counts"] == {"rose": 2, "tulip": 3}
    assert info["source"] == "url" and info["channels"] == 3
    # The single wrapping folder "flowers/" is stepped into; paths are relative to out_dir.
    assert all(p.startswith("images/flowers/") and (out / p).is_file() for p in manifest["path"])


def test_url_source_with_subdir(tmp_path, make_image_tree):
    make_image_tree(tmp_path / "pack" / "data" / "imgs", {"train": {"x": 1, "y": 1}, "test": {"x": 1}}, mode="L")
    (tmp_path / "pack" / "README").write_text("docs")
    archive = _zip_tree(tmp_path / "pack", tmp_path / "pack.zip")
    spec = {"source": "url", "url": "http://unused.invalid/pack.zip", "sha256": "0" * 64, "subdir": "pack/data/imgs"}
    info = build_dataset("p", spec, tmp_path / "out", archive=archive, log=lambda line: None)
    assert info["presplit"] and info["classes"] == ["x", "y"] and info["num_images"] == 3


# --------------------------------------------------------------------------- torchvision


@pytest.fixture
def tiny_mnist_root(tmp_path) -> Path:
    """torchvision's raw MNIST layout: root/MNIST/raw/*-idx?-ubyte (uncompressed)."""
    raw = tmp_path / "tv" / "MNIST" / "raw"
    _idx_dataset(raw, "train", [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 3, 3, 3])
    _idx_dataset(raw, "t10k", [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    return tmp_path / "tv"


def test_torchvision_mnist_offline(tmp_path, tiny_mnist_root):
    spec = {"source": "torchvision", "name": "MNIST", "root": str(tiny_mnist_root), "download": False}
    info = build_dataset("mnist", spec, tmp_path / "out")
    manifest, _ = _outputs(tmp_path / "out")
    assert info["presplit"] and info["num_images"] == 23 and info["channels"] == 1
    assert info["classes"][:2] == ["0 - zero", "1 - one"] and len(info["classes"]) == 10
    assert info["counts"]["3 - three"] == 5
    assert manifest["split"].value_counts().to_dict() == {"train": 13, "test": 10}
    assert all(p.startswith(("images/train/", "images/test/")) for p in manifest["path"])
    pixels = np.asarray(Image.open(tmp_path / "out" / manifest["path"][0]))
    assert pixels.shape == (28, 28) and pixels.dtype == np.uint8


def test_torchvision_max_per_class(tmp_path, tiny_mnist_root):
    spec = {"source": "torchvision", "name": "MNIST", "root": str(tiny_mnist_root), "download": False}
    info = build_dataset("mnist", {**spec, "max_per_class": 1}, tmp_path / "out")
    assert info["num_images"] == 20 and set(info["counts"].values()) == {2}


def test_torchvision_missing_data_is_a_data_error(tmp_path):
    spec = {"source": "torchvision", "name": "MNIST", "root": str(tmp_path / "nothing"), "download": False}
    with pytest.raises(DataError, match=r"MNIST.*nothing"):
        build_dataset("mnist", spec, tmp_path / "out")


def test_torchvision_unknown_class_lists_valid_names(tmp_path):
    with pytest.raises(DataError, match=r"CIFAR10.*MNIST"):
        build_dataset("x", {"source": "torchvision", "name": "NotADataset", "download": False}, tmp_path)


# --------------------------------------------------------------------------- config errors


@pytest.mark.parametrize(
    "spec, key",
    [
        ({"source": "ftp"}, "source"),
        ({"source": "builtin", "name": "digits", "on_corrupt": "ignore"}, "on_corrupt"),
        ({"source": "builtin", "name": "digits", "max_per_class": 0}, "max_per_class"),
        ({"source": "folder"}, "path"),
    ],
)
def test_bad_spec_names_the_key(tmp_path, spec, key):
    with pytest.raises(ConfigError, match=rf"datasets\.bad\.{key}"):
        build_dataset("bad", spec, tmp_path)
