"""Feature extraction with and without batch norms folded into their convolutions.

    .venv/bin/python benchmarks/folding.py [--backbones efficientnet_lite0,resnet50,mobilenet_v3_small]
        [--images 256] [--size 224] [--batch-size 32] [--precision auto] [--repeats 2]

For each backbone: `features.extract_features` (the code the extract_features rule runs, channels-
last) over a synthetic uint8 cache, with the backbone as built and as `fold_batch_norms` leaves it,
alternating the two `--repeats` times in one process; prints images/s of each (best of the repeats),
their ratio, the time the folding itself took, and how far the folded features are from the
unfolded ones at the same precision (relative L2 error per row, mean and max). Figures only, no
assertions; run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from common import ROOT

sys.path.insert(0, str(ROOT / "workflow"))
from transfergrid.backbones import native_preprocessing, resolve_backbone
from transfergrid.features import extract_features, pooled_and_spatial
from transfergrid.folding import example_input, fold_batch_norms
from transfergrid.model import build_base
from transfergrid.runtime import prepare_model, resolve_device, resolve_precision


def rate(net, images, normalisation, args, device, precision) -> tuple[float, torch.Tensor]:
    started = time.perf_counter()
    features = extract_features(
        net, images, normalisation, args.batch_size, device, precision=precision, channels_last=True
    )
    return len(images) / (time.perf_counter() - started), features["pooled"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", default="efficientnet_lite0,resnet50,mobilenet_v3_small")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count())
    device = resolve_device("auto")
    precision = resolve_precision(args.precision, device)
    images = torch.randint(0, 256, (args.images, 3, args.size, args.size), dtype=torch.uint8)
    print(f"device {device}, precision {precision}, {args.images} images of {args.size} px, batch {args.batch_size}")
    print(f"{'backbone':22}{'as built img/s':>16}{'folded img/s':>14}{'ratio':>8}{'folding s':>11}{'rel. error':>20}")
    for name in args.backbones.split(","):
        normalisation = native_preprocessing(resolve_backbone(name), "none")
        net = build_base(name, None, 0).eval()
        started = time.perf_counter()
        folded = fold_batch_norms(net, pooled_and_spatial, example_input(args.size))
        folding_seconds = time.perf_counter() - started
        built, folded = prepare_model(net, precision, device), prepare_model(folded, precision, device)
        rates = {"built": [], "folded": []}
        for _ in range(args.repeats):
            built_rate, reference = rate(built, images, normalisation, args, device, precision)
            folded_rate, pooled = rate(folded, images, normalisation, args, device, precision)
            rates["built"].append(built_rate)
            rates["folded"].append(folded_rate)
        error = (pooled - reference).norm(dim=1) / reference.norm(dim=1).clamp_min(1e-12)
        best = {label: max(values) for label, values in rates.items()}
        print(
            f"{name:22}{best['built']:16.1f}{best['folded']:14.1f}{best['folded'] / best['built']:7.2f}x"
            f"{folding_seconds:11.2f}{f'{error.mean():.1e} / {error.max():.1e}':>20}"
        )


if __name__ == "__main__":
    main()
