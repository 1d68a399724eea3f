"""Decode and resize every image of a dataset once per resolution into a uint8 tensor file.

Training and evaluation read this file and never touch JPEG/PNG decoding; normalisation and
augmentation run on tensors. Grayscale datasets are stored with one channel and expanded to
three on the fly, which keeps a 224 px MNIST cache at a third of the size.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from .io import atomic_path, read_manifest


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` and crop the centre square (torchvision's eval recipe)."""
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=None)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


def load_image(path: Path, size: int, mode: str) -> np.ndarray:
    with Image.open(path) as image:
        array = np.asarray(resize_center_crop(image.convert(mode), size), dtype=np.uint8)
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
    payload = {"images": images, "labels": torch.as_tensor(manifest["label"].to_numpy(), dtype=torch.int64)}
    with atomic_path(out_path) as tmp:
        torch.save(payload, tmp)
    return {"num_images": len(paths), "size": size, "channels": channels, "bytes": images.numel()}


def load_cache(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return payload["images"], payload["labels"]
