"""Data pipeline throughput: samples/s per core for the raw-JPEG path and the prepared-cache path.

Generates a COCO-format dataset of 640x480 JPEGs (hgpose.synth) in a temporary folder, then times,
in one process with one OpenCV and one torch thread (so the figure is per core):
  - PersonDataset items, and a DataLoader (batch 16, workers=0), reading JPEGs;
  - the same reading the cache that `hgpose prepare` builds (timed too, with all cores).
Targets on the project's 2-core machine: raw >= 500 samples/s per core, cache >= 3000.
The cache is read right after it was written, so from the page cache: on a real, larger-than-RAM
train2017 cache the disk's read speed (about 200 KB per sample at 256 px) can be the limit instead.

    python benchmarks/data_pipeline.py [--images 300] [--input-size 256] [--seconds 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import torch

from hgpose.data.cache import prepare_cache
from hgpose.data.coco import annotation_path, load_split
from hgpose.data.dataset import PersonDataset
from hgpose.data.loader import make_loader


def items_per_second(dataset: PersonDataset, seconds: float) -> float:
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for i in range(len(dataset)):
            dataset[i]
            n += 1
            if n % 64 == 0 and time.perf_counter() - start >= seconds:
                break
    return n / (time.perf_counter() - start)


def loader_per_second(dataset: PersonDataset, seconds: float, workers: int = 0) -> float:
    n, epoch, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for batch in make_loader(dataset, 16, shuffle=True, seed=0, epoch=epoch, workers=workers):
            n += len(batch["valid"])
            if time.perf_counter() - start >= seconds:
                break
        epoch += 1
    return n / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300, help="generated 640x480 training images")
    parser.add_argument("--input-size", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=5.0, help="time per measurement")
    parser.add_argument("--data", type=Path, default=None, help="use this COCO-style root instead of generating")
    args = parser.parse_args(argv)

    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="hgpose-bench-") as tmp:
        root = args.data
        if root is None:
            from hgpose.synth import generate_dataset

            root = Path(tmp) / "coco"
            started = time.perf_counter()
            generate_dataset(root, args.images, 0, image_size=(640, 480), seed=0, progress=False)
            print(f"generated {args.images} 640x480 images in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        index = load_split(root, "train2017")
        print(index.describe())

        started = time.perf_counter()
        prepare_cache(annotation_path(root, "train2017"), root / "train2017", args.input_size, Path(tmp) / "cache",
                      progress=False)
        prepare_rate = len(index) / (time.perf_counter() - started)

        torch.set_num_threads(1)
        cv2.setNumThreads(1)
        raw = PersonDataset(index, args.input_size, cache="off")
        cached = PersonDataset(index, args.input_size, cache="auto", cache_dir=Path(tmp) / "cache")
        assert cached.using_cache
        rows = [
            ("raw JPEG, dataset items", items_per_second(raw, args.seconds), 500),
            ("raw JPEG, DataLoader batch 16", loader_per_second(raw, args.seconds), 500),
            ("cache, dataset items", items_per_second(cached, args.seconds), 3000),
            ("cache, DataLoader batch 16", loader_per_second(cached, args.seconds), 3000),
        ]
        print(f"\n{len(index)} people, crops of {args.input_size} px, 1 process, 1 thread (per core):")
        for name, rate, target in rows:
            verdict = "ok" if rate >= target else "BELOW TARGET"
            print(f"  {name:32s} {rate:8.0f} samples/s   (target {target}: {verdict})")
        print(f"\nall {cores} cores:")
        print(f"  {'hgpose prepare (build cache)':32s} {prepare_rate:8.0f} samples/s")
        for name, dataset in (("raw JPEG", raw), ("cache", cached)):
            rate = loader_per_second(dataset, args.seconds, workers=cores)
            print(f"  {name + f', DataLoader {cores} workers':32s} {rate:8.0f} samples/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
