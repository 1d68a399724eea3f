"""Augmentation policies that run on batched float tensors (on the training device).

``standard`` draws, per image, a random-resized-crop box, a horizontal flip and a small rotation
and applies all three with a single ``affine_grid``/``grid_sample`` call, so augmentation costs one
batched kernel instead of a Python loop over PIL images.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def no_augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return images


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = (torch.rand(images.shape[0], generator=generator) < 0.5).to(images.device)
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def random_resized_crop_flip_rotate(
    images: torch.Tensor,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.35, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    max_degrees: float = 10.0,
) -> torch.Tensor:
    n = images.shape[0]
    area = _uniform(n, *scale, generator)
    log_ratio = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), generator).exp()
    width = (area * log_ratio).sqrt().clamp(max=1.0)  # as a fraction of the image side
    height = (area / log_ratio).sqrt().clamp(max=1.0)
    centre_x = _uniform(n, -1, 1, generator) * (1 - width)
    centre_y = _uniform(n, -1, 1, generator) * (1 - height)
    angle = _uniform(n, -max_degrees, max_degrees, generator) * math.pi / 180
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack(
        [
            torch.stack([width * cos * flip, -height * sin, centre_x], 1),
            torch.stack([width * sin * flip, height * cos, centre_y], 1),
        ],
        1,
    ).to(images.device, images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


AUGMENTATIONS: dict[str, Augment] = {
    "none": no_augment,
    "flip": random_flip,
    "standard": random_resized_crop_flip_rotate,
}
