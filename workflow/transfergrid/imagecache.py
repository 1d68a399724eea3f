"""Decode and resize every image of a dataset once per resolution into a uint8 tensor file.

Training and evaluation read this file and never touch JPEG/PNG decoding; normalisation and
augmentation run on tensors. Grayscale datasets are stored with one channel and expanded to
three on the fly, which keeps a 224 px MNIST cache at a third of the size. Images with more
than 8 bits per sample (16-bit PNG/TIFF/PGM, float TIFF) are scaled to 8 bits, never clipped.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from .io import atomic_path, read_manifest

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
    """Write ``{"images": uint8 [N,C,size,size], "labels": int64 [N]}`` in manifest row order."""
    manifest = read_manifest(manifest_csv)
    paths = resolve_paths(manifest, Path(manifest_csv).parent)
    mode = "L" if channels == 1 else "RGB"
    images = torch.empty((len(paths), channels, size, size), dtype=torch.uint8)
    with ThreadPoolExecutor(max_workers=threads) as pool:  # PIL releases the GIL while decoding
        for index, array in enumerate(pool.map(lambda p: load_image(p, size, mode), paths)):
            images[index] = torch.from_numpy(array)
    # A copy: pandas may hand out a read-only view, which torch warns about.
    labels = torch.as_tensor(manifest["label"].to_numpy(dtype=np.int64, copy=True))
    payload = {"images": images, "labels": labels}
    with atomic_path(out_path) as tmp:
        torch.save(payload, tmp)
    return {"num_images": len(paths), "size": size, "channels": channels, "bytes": images.numel()}


def load_cache(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return payload["images"], payload["labels"]
