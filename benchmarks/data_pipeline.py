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


def samples(dataset: PersonDataset, batch: int):
    """An endless stream of batch sizes: dataset items one by one (batch 0) or DataLoader batches."""
    epoch = 0
    while True:
        if batch == 0:
            for i in range(len(dataset)):
                dataset[i]
                yield 1
        else:
            for b in make_loader(dataset, batch, shuffle=True, seed=0, epoch=epoch, workers=0):
                yield len(b["valid"])
        epoch += 1


def rate(dataset: PersonDataset, batch: int, seconds: float, rounds: int = 5) -> tuple[float, float]:
    """(best, overall) samples per CPU-second of this process over `rounds` timed rounds.

    CPU time, not wall time: on a shared machine other processes' load does not count against us
    (it still slows us through shared caches and SMT siblings, hence also the best round)."""
    stream = samples(dataset, batch)
    rates, total_n, total_cpu = [], 0, 0.0
    for _ in range(rounds):
        n, cpu0, wall0 = 0, time.process_time(), time.perf_counter()
        while time.perf_counter() - wall0 < seconds / rounds:
            n += next(stream)
        cpu = time.process_time() - cpu0
        rates.append(n / cpu)
        total_n, total_cpu = total_n + n, total_cpu + cpu
    return max(rates), total_n / total_cpu


def parallel_rate(dataset: PersonDataset, workers: int, seconds: float) -> float:
    """Wall-clock samples/s of a DataLoader with `workers` processes (batch 16)."""
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
            from hgpose.synth import generate_dataset  # spawns workers: this file needs its __main__ guard

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
            ("raw JPEG, dataset items", raw, 0, 500),
            ("raw JPEG, DataLoader batch 16", raw, 16, 500),
            ("cache, dataset items", cached, 0, 3000),
            ("cache, DataLoader batch 16", cached, 16, 3000),
        ]
        print(f"\n{len(index)} people, crops of {args.input_size} px; one process, one thread: samples per "
              f"CPU-second (= per core), best of 5 rounds / overall; load average {os.getloadavg()[0]:.1f}:")
        for name, dataset, batch, target in rows:
            best, overall = rate(dataset, batch, args.seconds)
            verdict = "ok" if best >= target else "BELOW TARGET"
            print(f"  {name:32s} {best:8.0f} / {overall:6.0f} samples/s   (target {target}: {verdict})")
        print(f"\nwall clock, all {cores} cores:")
        print(f"  {'hgpose prepare (build cache)':32s} {prepare_rate:8.0f} samples/s")
        for name, dataset in (("raw JPEG", raw), ("cache", cached)):
            label = f"{name}, DataLoader {cores} workers"
            print(f"  {label:32s} {parallel_rate(dataset, cores, args.seconds):8.0f} samples/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
