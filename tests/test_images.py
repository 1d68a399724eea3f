"""Images with more than 8 bits per sample reach the uint8 cache scaled, never clipped.

The files are real: 16-bit PNG/TIFF/PGM and float/int32 TIFF written by PIL, and a 16-bit RGB
PNG (which PIL cannot write) assembled chunk by chunk with zlib and struct.
"""

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transfergrid.imagecache import build_cache, load_cache, load_image, scale_to_uint8
from transfergrid.sources import as_uint8_image, build_dataset

SIZE = 8


def png16_rgb(path: Path, pixels: np.ndarray) -> Path:
    """A 16-bit RGB PNG (colour type 2, bit depth 16) from an HxWx3 uint16 array."""
    height, width, _ = pixels.shape
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)  # filter type 0 per row

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )
    return path


def _uniform(value, dtype, channels: int = 1) -> np.ndarray:
    shape = (SIZE, SIZE, channels) if channels > 1 else (SIZE, SIZE)
    return np.full(shape, value, dtype=dtype)


def _save(path: Path, pixels: np.ndarray) -> Path:
    Image.fromarray(pixels).save(path)
    return path


# kind -> (file name, writer(path, value) -> path, PIL mode it opens in, [(stored value, cached uint8)])
# Two stored values per kind: a dark and a bright class, which clipping made identical (both 255).
KINDS = {
    "png-16bit-gray": (
        "img.png",
        lambda p, v: _save(p, _uniform(v, np.uint16)),
        "I;16",
        [(10_000, 39), (50_000, 195)],  # v * 255 / 65535, the dtype's full range
    ),
    "tiff-16bit-gray": ("img.tif", lambda p, v: _save(p, _uniform(v, np.uint16)), "I;16", [(257, 1), (65535, 255)]),
    "tiff-16bit-gray-big-endian": (
        "img.tif",
        lambda p, v: _save(p, _uniform(v, np.dtype(">u2"))),
        "I;16B",
        [(1000, 4), (60_000, 233)],
    ),
    "tiff-int32-16bit-values": (  # mode I holding 16-bit values: a dark one must not pass for 8-bit
        "img.tif",
        lambda p, v: _save(p, _uniform(v, np.int32)),
        "I",
        [(200, 1), (40_000, 156)],
    ),
    "tiff-float-0-1": ("img.tif", lambda p, v: _save(p, _uniform(v, np.float32)), "F", [(0.2, 51), (0.8, 204)]),
    "tiff-float-0-255": ("img.tif", lambda p, v: _save(p, _uniform(v, np.float32)), "F", [(30.0, 30), (200.4, 200)]),
    "png-16bit-rgb": (  # PIL itself decodes it to 8-bit RGB, keeping the high byte
        "img.png",
        lambda p, v: png16_rgb(p, _uniform(v, np.uint16, channels=3)),
        "RGB",
        [(0x2000, 32), (0xC0C0, 192)],
    ),
}


def _dataset(root: Path, kind: str) -> dict:
    """A folder dataset of ``kind``: class a_dark (label 0) and class b_bright (label 1)."""
    name, write, mode, pairs = KINDS[kind]
    for class_name, (value, _) in zip(("a_dark", "b_bright"), pairs):
        (root / "data" / class_name).mkdir(parents=True)
        path = write(root / "data" / class_name / name, value)
        with Image.open(path) as image:
            assert image.mode == mode  # the file really is of the kind the test says
    return build_dataset(kind, {"source": "folder", "path": str(root / "data")}, root / "out", log=lambda line: None)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_wide_images_are_scaled_into_the_cache_and_classes_stay_apart(tmp_path, kind):
    info = _dataset(tmp_path, kind)
    channels = info["channels"]
    assert channels == (3 if KINDS[kind][2] == "RGB" else 1)
    cache = tmp_path / "cache.pt"
    build_cache(tmp_path / "out" / "manifest.csv", SIZE, channels, cache, threads=1)
    images, labels = load_cache(cache)
    assert images.dtype == torch.uint8 and images.shape == (2, channels, SIZE, SIZE)
    cached = {int(label): image for label, image in zip(labels, images)}
    (_, dark), (_, bright) = KINDS[kind][3]
    assert torch.all(cached[0] == dark) and torch.all(cached[1] == bright)


def test_16bit_pgm_is_scaled_by_load_image(tmp_path):
    """PIL opens 16-bit PGM in the 32-bit mode I (PGM is not a dataset extension, but the cache reads anything)."""
    path = _save(tmp_path / "dark.pgm", np.array([[200, 40_000], [0, 65535]], np.uint16))
    with Image.open(path) as image:
        assert image.mode == "I"
    assert load_image(path, 2, "L").tolist() == [[[1, 156], [0, 255]]]


def test_mixed_dataset_puts_16bit_gray_into_rgb_scaled(tmp_path):
    (tmp_path / "data" / "gray").mkdir(parents=True)
    (tmp_path / "data" / "color").mkdir(parents=True)
    _save(tmp_path / "data" / "gray" / "a.png", _uniform(32896, np.uint16))
    _save(tmp_path / "data" / "color" / "a.png", _uniform(10, np.uint8, channels=3))
    info = build_dataset("mixed", {"source": "folder", "path": str(tmp_path / "data")}, tmp_path / "out")
    assert info["channels"] == 3
    build_cache(tmp_path / "out" / "manifest.csv", SIZE, 3, tmp_path / "c.pt", threads=1)
    images, labels = load_cache(tmp_path / "c.pt")
    gray = images[labels.tolist().index(1)]  # classes sorted: color=0, gray=1
    assert torch.all(gray == 128)


@pytest.mark.parametrize(
    "kind, pixels, expected",
    [
        ("uint16 by the full range", np.array([[0, 32896, 65535]], np.uint16), [0, 128, 255]),
        ("dark uint16 stays dark", np.array([[0, 255]], np.uint16), [0, 1]),
        ("bool", np.array([[False, True]]), [0, 255]),
        ("int64 within 0..255 is 8-bit", np.array([[0, 17, 255]], np.int64), [0, 17, 255]),
        ("int32 within 0..65535 is 16-bit", np.array([[0, 300, 65535]], np.int32), [0, 1, 255]),
        ("int32 beyond 16 bits: own min..max", np.array([[100_000, 200_000, 300_000]], np.int32), [0, 128, 255]),
        ("negative int16: own min..max", np.array([[-1000, 0, 1000]], np.int16), [0, 128, 255]),
        ("float within 0..1", np.array([[0.0, 0.5, 1.0]], np.float64), [0, 128, 255]),
        ("float within 0..255", np.array([[0.0, 100.2, 255.0]], np.float32), [0, 100, 255]),
        ("float outside: own min..max", np.array([[-2.0, 0.0, 2.0]], np.float32), [0, 128, 255]),
        ("float NaN counts as 0", np.array([[np.nan, 0.5, 1.0]], np.float32), [0, 128, 255]),
        ("constant outside the ranges", np.array([[300.0, 300.0]], np.float32), [0, 0]),
    ],
)
def test_scale_to_uint8(kind, pixels, expected):
    scaled = scale_to_uint8(pixels)
    assert scaled.dtype == np.uint8 and scaled.ravel().tolist() == expected


@pytest.mark.parametrize(
    "image, mode, value",
    [
        (np.full((4, 4), 50_000, np.uint16), "L", 195),  # Image.fromarray cannot even take HxWx3 uint16
        (np.full((4, 4, 3), 0.5, np.float64), "RGB", 128),
        (np.full((4, 4, 3), 60_000, np.uint16), "RGB", 233),
        (np.full((4, 4), 200, np.int64), "L", 200),
        (Image.fromarray(np.full((4, 4), 50_000, np.uint16)), "L", 195),  # PIL I;16
        (Image.fromarray(np.full((4, 4), 0.25, np.float32)), "L", 64),  # PIL F
        (Image.fromarray(np.full((4, 4, 4), 90, np.uint8)), "RGB", 90),  # RGBA, as before
    ],
)
def test_in_memory_images_are_scaled_not_clipped(image, mode, value):
    converted = as_uint8_image(image)
    assert converted.mode == mode and np.all(np.asarray(converted) == value)
