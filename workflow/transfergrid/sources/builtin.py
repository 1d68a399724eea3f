"""``builtin`` sources: offline datasets shipped with Python or Debian packages."""

from __future__ import annotations

import gzip
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import DataError
from .common import Collected, Options, class_choice, required_key
from .memory import InMemorySource, InMemorySplit, collect_in_memory

FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


def _load_digits(spec: dict) -> InMemorySource:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Pixels are 0..16 intensities; stretch to the full uint8 range.
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return InMemorySource(
        class_names={i: str(i) for i in range(10)},
        splits=[InMemorySplit("", digits.target.tolist(), images.__getitem__)],
    )


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip-compressed or not."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as handle:
        data = handle.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file (magic {data[:4].hex()})")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path} holds {body.size} bytes of data, its header promises shape {shape}")
    return body.reshape(shape)


def _load_fashion_mnist_debian(spec: dict) -> InMemorySource:
    directory = FASHION_MNIST_DEBIAN_DIR
    if not directory.is_dir():
        raise DataError(
            f"builtin fashion_mnist_debian needs {directory}: install it with 'apt-get install dataset-fashion-mnist'"
        )
    splits = []
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(directory / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(directory / f"{prefix}-labels-idx1-ubyte.gz")
        if len(images) != len(labels):
            raise DataError(f"{directory}: {prefix} has {len(images)} images but {len(labels)} labels")
        splits.append(InMemorySplit(split, labels.tolist(), images.__getitem__))
    return InMemorySource(dict(enumerate(FASHION_MNIST_CLASSES)), splits)


# Adding a built-in dataset is one entry here: name -> loader(spec) -> InMemorySource.
BUILTIN_DATASETS: dict[str, Callable[[dict], InMemorySource]] = {
    "digits": _load_digits,
    "fashion_mnist_debian": _load_fashion_mnist_debian,
}


def collect_builtin(name: str, spec: dict, out_dir: Path, archive: Path | None, options: Options, log) -> Collected:
    builtin = required_key(name, spec, "name")
    loader = BUILTIN_DATASETS.get(builtin)
    if loader is None:
        raise DataError(
            f"datasets.{name}.name: unknown builtin dataset {builtin!r}; valid: {', '.join(sorted(BUILTIN_DATASETS))}"
        )
    return collect_in_memory(loader(spec), out_dir, options, class_choice(name, options))
