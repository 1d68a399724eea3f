"""Decode and resize every image of a dataset once per resolution into a uint8 tensor file.

Training and evaluation read this file and never touch JPEG/PNG decoding; normalisation and
augmentation run on tensors. Grayscale datasets are stored with one channel and expanded to
three on the fly, which keeps a 224 px MNIST cache at a third of the size. Images with more
than 8 bits per sample (16-bit PNG/TIFF/PGM, float TIFF) are scaled to 8 bits, never clipped.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from PIL import Image

from .io import atomic_path, read_manifest

if TYPE_CHECKING:
    import torch

# PIL modes with more than 8 bits per sample: 16-bit and 32-bit integers, 32-bit floats.
WIDE_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` and crop the centre square (torchvision's eval recipe)."""
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=None)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


def _stretch(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``low``..``high`` linearly onto 0..255."""
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.rint((values - low) * (255.0 / (high - low))).clip(0, 255).astype(np.uint8)


def scale_to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Pixels of any numeric dtype as uint8, scaled rather than clipped to 0..255.

    * uint8 stays as it is; bool becomes 0/255;
    * uint16 is scaled by the dtype's full range (65535 -> 255), not by the image's own range,
      so that a dark image stays darker than a bright one of the same dataset;
    * other integers: values within 0..255 are 8-bit values in a wide container and stay, values
      within 0..65535 are 16-bit and scaled as uint16, anything else (negative, 32-bit) is
      stretched from the image's own min..max;
    * floats: values within [0, 1] are scaled by 255, values within [0, 255] stay (rounded),
      anything else is stretched from the image's own min..max; NaN and infinities count as 0.

    A constant image that must be stretched has no range to stretch and becomes 0.
    """
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype == np.bool_:
        return pixels.astype(np.uint8) * 255
    if pixels.dtype.kind == "u" and pixels.dtype.itemsize == 2:
        return _stretch(pixels.astype(np.float64), 0, 65535)
    values = np.nan_to_num(pixels.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if pixels.dtype.kind == "f" and low >= 0 and high <= 1:
        return _stretch(values, 0, 1)
    if low >= 0 and high <= 255:
        return _stretch(values, 0, 255)
    if pixels.dtype.kind in "iu" and low >= 0 and high <= 65535:
        return _stretch(values, 0, 65535)
    return _stretch(values, low, high)


def as_8bit(image: Image.Image) -> Image.Image:
    """``image`` with 8-bit samples. PIL's 16-bit, 32-bit integer and float modes (which
    ``Image.convert`` clips to 0..255) become mode L, scaled by ``scale_to_uint8``; every other mode
    is returned as it is. 16-bit RGB(A) PNGs need nothing: PIL decodes them to 8 bits itself,
    keeping the high byte."""
    if image.mode not in WIDE_MODES:
        return image
    pixels = np.asarray(image)
    if image.mode == "I" and pixels.size and pixels.min() >= 0 and pixels.max() <= 65535:
        # Mode I is where PIL puts the samples of 16-bit PGM/PPM and some TIFFs: scale them as
        # 16-bit even when an image is so dark that its values would also fit 8 bits.
        pixels = pixels.astype(np.uint16)
    return Image.fromarray(scale_to_uint8(pixels))


def load_image(path: Path, size: int, mode: str) -> np.ndarray:
    with Image.open(path) as image:
        array = np.array(resize_center_crop(as_8bit(image).convert(mode), size), dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def resolve_paths(manifest: pd.DataFrame, base: Path) -> list[Path]:
    """Manifest paths are relative to the manifest's folder unless absolute."""
    return [base / p for p in manifest["path"]]


def build_cache(manifest_csv: Path, size: int, channels: int, out_path: Path, threads: int = 2) -> dict:
    """Write the images as a uint8 ``[N, C, size, size]`` ``.npy`` file in manifest row order, and
    their labels as ``labels_path(out_path)``. Images are decoded in parallel and written one by
    one, so building a cache of any size holds a few images in memory, not the dataset."""
    manifest = read_manifest(manifest_csv)
    paths = resolve_paths(manifest, Path(manifest_csv).parent)
    mode = "L" if channels == 1 else "RGB"
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
        "fortran_order": False,
        "shape": (len(paths), channels, size, size),
    }
    with atomic_path(out_path) as tmp, open(tmp, "wb") as handle:
        np.lib.format.write_array_header_2_0(handle, header)
        with ThreadPoolExecutor(max_workers=threads) as pool:  # PIL releases the GIL while decoding
            for array in pool.map(lambda p: load_image(p, size, mode), paths):
                handle.write(np.ascontiguousarray(array, dtype=np.uint8).tobytes())
    save_array(manifest["label"].to_numpy(dtype=np.int64), labels_path(out_path))
    return {"num_images": len(paths), "size": size, "channels": channels, "bytes": len(paths) * channels * size**2}


def labels_path(images_path: Path) -> Path:
    """``64px.npy`` -> ``64px.labels.npy``."""
    images_path = Path(images_path)
    return images_path.with_name(images_path.stem + ".labels.npy")


class ImageCache:
    """The rows of an image cache, read on demand with positioned reads.

    Memory holds the rows being read, not the dataset: a memory map would leave every page a
    training job touched counted in its resident memory (6 GB after one epoch over a 6 GB cache),
    while positioned reads go through the operating system's page cache, which is shared and
    reclaimable. Indexing with row numbers returns a uint8 tensor, like indexing a tensor.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        with open(self.path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, fortran_order, dtype = read_header(handle)
            self.offset = handle.tell()
        if dtype != np.uint8 or fortran_order or len(shape) != 4:
            raise ValueError(f"{self.path} is not a uint8 [N, C, H, W] image cache")
        self.shape = tuple(shape)
        self.row_bytes = int(np.prod(shape[1:]))
        self._fd = os.open(self.path, os.O_RDONLY)

    @property
    def dtype(self):
        import torch

        return torch.uint8

    def __len__(self) -> int:
        return self.shape[0]

    def __iter__(self):
        for row in range(len(self)):
            yield self[row]

    def __getitem__(self, rows) -> torch.Tensor:
        import torch  # here, not at the top: the jobs that build caches never need torch

        if isinstance(rows, (int, np.integer)):
            return self[[rows]][0]
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"{self.path}: rows outside 0..{len(self) - 1}")
        out = np.empty((len(rows), *self.shape[1:]), dtype=np.uint8)
        for position in np.argsort(rows, kind="stable"):  # in file order: sequential reads
            buffer = memoryview(out[position]).cast("B")
            read = os.preadv(self._fd, [buffer], self.offset + int(rows[position]) * self.row_bytes)
            if read != self.row_bytes:
                raise OSError(f"{self.path}: short read of row {rows[position]}")
        return torch.from_numpy(out)

    def __del__(self):
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)


def load_cache(path: Path) -> tuple[ImageCache, torch.Tensor]:
    """The image rows (read on demand) and the labels of a cache written by ``build_cache``."""
    import torch

    return ImageCache(path), torch.from_numpy(np.load(labels_path(path), allow_pickle=False))


def write_cache(images: torch.Tensor, labels: torch.Tensor, path: Path) -> None:
    """A cache from tensors in memory (tests and benchmarks), in ``build_cache``'s format."""
    save_array(images.numpy().astype(np.uint8), path)
    save_array(labels.numpy().astype(np.int64), labels_path(path))


def save_array(array: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:  # a handle: np.save would add ".npy"
        np.save(handle, array, allow_pickle=False)
