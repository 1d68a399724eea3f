"""Peak memory of the compute jobs on a large image cache (issue 4: a training job on a 40,000-image
dataset at 224 px, a 6 GB cache, runs with peak RSS under 3 GB on CPU).

    .venv/bin/python benchmarks/memory.py [--images 40000] [--size 224] [--fraction 0.1]
        [--backbone mobilenet_v3_small] [--jobs train,evaluate,features] [--dir DIR] [--keep]

Writes a synthetic dataset in the workflow's formats: the uint8 ``[N, 3, size, size]`` image cache
(``.npy`` written incrementally with ``imagecache.build_cache``'s header, so this script never
holds it either; noise tinted per class, 10 classes) with its labels file, a split.csv from
``split.make_split`` and a classes.json. Then runs each job in its own process, as Snakemake would,
and prints its peak RSS (``wait4`` rusage of that process), the bytes it read (``rchar``) and its
seconds:

- train: ``cell.train_candidate``, one epoch over ``--fraction`` of the train split (rows spread
  over the whole file) and the validation pass over the whole val split (15% of the images);
- evaluate: ``evaluate.evaluate_network_cell`` on the trained candidate, over the test split;
- features: ``features.build_feature_cache`` over every image (it keeps N x feature-width float32).

The synthetic data is deleted at the end (unless --keep). Figures only, no assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import child_command

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))  # this checkout's package, not an installed one

CLASSES = 10
CHUNK = 256  # images generated and written at a time
TARGET_BYTES = 3 * 1024**3


def cell_settings_of(args: argparse.Namespace):
    """A full-fine-tuning CPU cell, one epoch, with the schema's defaults for everything else."""
    from transfergrid.config import apply_schema, load_schema
    from transfergrid.docs import SCHEMA
    from transfergrid.grid import cell_settings
    from transfergrid.naming import Cell, format_fraction

    train = {"image_size": args.size, "epochs": 1, "batch_size": args.batch_size, "augment": "none", "device": "cpu"}
    config = apply_schema({"train": train}, load_schema(SCHEMA))
    return cell_settings(
        config, Cell("synthetic", format_fraction(args.fraction), args.backbone, "none", "full", "linear", 0)
    )


# ----------------------------------------------------------------------------------------------
# The synthetic dataset


def write_dataset(workdir: Path, images: int, size: int, fraction: float) -> Path:
    """The image cache, its labels, split.csv and classes.json in ``workdir``; returns the cache."""
    import pandas as pd

    from transfergrid.imagecache import labels_path, save_array
    from transfergrid.io import write_csv, write_json
    from transfergrid.split import make_split

    rng = np.random.default_rng(0)
    labels = np.arange(images, dtype=np.int64) % CLASSES
    tint = rng.integers(0, 64, size=(CLASSES, 3, 1, 1), dtype=np.uint8)
    cache = workdir / f"{size}px.npy"
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False}
    with open(cache, "wb") as handle:
        np.lib.format.write_array_header_2_0(handle, {**header, "shape": (images, 3, size, size)})
        for start in range(0, images, CHUNK):
            rows = labels[start : start + CHUNK]
            chunk = rng.integers(0, 192, size=(len(rows), 3, size, size), dtype=np.uint8)
            chunk += tint[rows]
            handle.write(chunk.tobytes())
    save_array(labels, labels_path(cache))
    manifest = pd.DataFrame(
        {
            "path": [f"images/{i}.png" for i in range(images)],  # never read: the cache holds the pixels
            "label": labels,
            "class_name": [f"class{label}" for label in labels],
            "split": "",
        }
    )
    write_csv(make_split(manifest, 0.15, 0.15, 0, [fraction], "synthetic"), workdir / "split.csv")
    write_json(workdir / "classes.json", {"classes": [f"class{i}" for i in range(CLASSES)], "channels": 3})
    return cache


# ----------------------------------------------------------------------------------------------
# The jobs, each run in a child process


def run_job(name: str, args: argparse.Namespace) -> dict:
    workdir = Path(args.workdir)
    cache = workdir / f"{args.size}px.npy"
    cell_dir = workdir / "cell"
    candidate = cell_dir / "lr1.0"
    threads = args.threads
    if name == "train":
        from transfergrid.cell import CellInputs, train_candidate

        inputs = CellInputs(split=workdir / "split.csv", classes=workdir / "classes.json", cache=cache)
        result = train_candidate(cell_settings_of(args), inputs, candidate, threads, log=print)
        return {"train_rows": result.summary["num_train"], "val_rows": result.summary["num_val"]}
    if name == "evaluate":
        from transfergrid.evaluate import evaluate_network_cell

        metrics = evaluate_network_cell([candidate], cache, workdir / "split.csv", cell_dir, threads, log=print)
        return {"test_rows": metrics["inference"]["images"]}
    if name == "features":
        from transfergrid.features import FeatureSource, build_feature_cache

        summary = build_feature_cache(
            FeatureSource(args.backbone, "none"),
            cache,
            workdir / "features.pt",
            batch_size=args.batch_size,
            device="cpu",
            threads=threads,
            log=print,
            precision="auto",
            channels_last=True,
        )
        return {"rows": summary["num_images"], "feature_width": summary["num_features"]}
    raise SystemExit(f"unknown job {name!r}")


def read_chars() -> int:
    """Bytes this process has read through read/pread system calls (the cache rows among them)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


def measure(name: str, args: argparse.Namespace) -> dict:
    """Run one job in a child process; its peak RSS from wait4, its own report from stdout."""
    keys = ("images", "size", "fraction", "backbone", "batch_size", "threads")
    command = child_command(__file__, name, args.workdir, args, keys)
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"job {name} failed ({process.returncode}):\n{output[-3000:]}")
    report = json.loads(output.strip().splitlines()[-1])
    return {"job": name, "peak_rss": usage.ru_maxrss * 1024, "seconds": seconds, **report}


def gb(num_bytes: float) -> str:
    return f"{num_bytes / 1024**3:.2f} GB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40_000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--fraction", type=float, default=0.1, help="of the train split, for the one epoch")
    parser.add_argument("--backbone", default="mobilenet_v3_small")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--jobs", default="train,evaluate,features")
    parser.add_argument("--dir", type=Path, help="where to write the synthetic dataset (default: the temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic dataset")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        report = run_job(args.child, args)
        print(json.dumps({**report, "read_bytes": read_chars()}))
        return

    cache_bytes = args.images * 3 * args.size**2
    parent = Path(args.dir or tempfile.gettempdir())
    free = shutil.disk_usage(parent).free
    if free < 1.2 * cache_bytes:
        raise SystemExit(f"{parent}: {gb(free)} free, the cache needs {gb(cache_bytes)}")
    args.workdir = Path(tempfile.mkdtemp(prefix="transfergrid-memory-", dir=parent))
    try:
        started = time.perf_counter()
        cache = write_dataset(args.workdir, args.images, args.size, args.fraction)
        print(
            f"cache: {args.images} images at {args.size} px, {gb(cache.stat().st_size)} "
            f"(written in {time.perf_counter() - started:.0f} s to {cache})",
            flush=True,
        )
        for name in args.jobs.split(","):
            result = measure(name, args)
            rows = ", ".join(f"{key} {value}" for key, value in result.items() if key.endswith("rows"))
            verdict = "under" if result["peak_rss"] < TARGET_BYTES else "OVER"
            print(
                f"{name}: peak RSS {gb(result['peak_rss'])} ({verdict} the {gb(TARGET_BYTES)} target), "
                f"{rows}, {gb(result['read_bytes'])} read, {result['seconds']:.0f} s",
                flush=True,
            )
    finally:
        if args.keep:
            print(f"kept {args.workdir}")
        else:
            shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
