"""The augmented data path: samples/s of the cached batch loader feeding `--augment`'s warp on the device.

Builds a prepared cache as benchmarks/data_pipeline.py does (random crops, no JPEG decoded; warm in
the page cache), then for 0, 1 and 2 loader workers measures samples/s of
  plain      loader -> device (what `hgpose train` feeds the step without --augment)
  augmented  loader -> device -> float -> hgpose.data.augment.BatchAugment (flip, rotation, scale; defaults)
and the warp alone on the device (a batch already there, as many times as fit in the time).
The step's own cost with and without augmentation is in benchmarks/train_step.py.

    python benchmarks/augment_loader.py [--rows 20000] [--input-size 256] [--seconds 8] [--device auto] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_pipeline import BATCH, synthetic_index, warm_up, write_cache  # noqa: E402
from hgpose.data.augment import AugmentConfig, BatchAugment  # noqa: E402
from hgpose.data.dataset import PersonDataset  # noqa: E402
from hgpose.data.loader import device_batches, make_loader  # noqa: E402
from hgpose.model.hourglass import to_model_input  # noqa: E402
from hgpose.runtime.device import resolve_device  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loader_rate(dataset, workers: int, device, augment: bool, seconds: float, epoch: int) -> float:
    """Samples/s through the loader (and the warp), `seconds` of it after the first batch."""
    warp = BatchAugment(AugmentConfig(enabled=True), seed=0, epoch=epoch, heatmap_size=dataset.heatmap_size)
    loader = make_loader(dataset, BATCH, shuffle=True, seed=0, epoch=epoch, workers=workers, device=device)
    batches = device_batches(loader, device)
    n, start = 0, None
    for batch in batches:
        image = batch["image"].to(device, non_blocking=True)
        if augment:
            keypoints, visibility = batch["keypoints"].to(device), batch["visibility"].to(device)
            image, _, _ = warp(to_model_input(image), keypoints, visibility, batch["index"])
        if start is None:  # the workers' start-up is not the steady state
            sync(device)
            start = time.perf_counter()
            continue
        n += len(batch["valid"])
        if time.perf_counter() - start >= seconds:
            break
    sync(device)
    rate = n / (time.perf_counter() - start)
    del batches, loader
    return rate


def warp_rate(input_size: int, device, seconds: float) -> float:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (BATCH, 3, input_size, input_size), dtype=torch.uint8, generator=g).to(device)
    keypoints = (torch.rand(BATCH, 17, 2, generator=g) * (input_size // 4 - 1)).to(device)
    visibility = torch.full((BATCH, 17), 2, device=device)
    warp = BatchAugment(AugmentConfig(enabled=True), seed=0, epoch=1, heatmap_size=input_size // 4)
    n, batch_number = 0, 0
    warp(to_model_input(images), keypoints, visibility, torch.arange(BATCH))  # warm-up
    sync(device)
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        indices = torch.arange(BATCH) + batch_number * BATCH  # new draws each batch, as in an epoch
        warp(to_model_input(images), keypoints, visibility, indices)
        n, batch_number = n + BATCH, batch_number + 1
        if batch_number % 10 == 0:
            sync(device)
    sync(device)
    return n / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000, help="people in the cache (kept in the page cache)")
    parser.add_argument("--input-size", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=8.0, help="time per measurement")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="where the cache is built")
    parser.add_argument("--quick", action="store_true", help="2,000 rows at 64 px, 0.5 s runs: a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.input_size, args.seconds = 2000, 64, 0.5
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory(prefix="hgpose-augment-bench-", dir=args.dir) as tmp:
        tmp = Path(tmp)
        index = synthetic_index(tmp / "coco", args.rows)
        cache = write_cache(index, args.input_size, tmp / "cache")
        dataset = PersonDataset(index, args.input_size, cache=cache)
        warm_up(cache / "crops.u8", args.rows * 3 * args.input_size**2)
        print(f"{args.rows} cached people at {args.input_size} px (warm), batch {BATCH}, device {device}, "
              f"{torch.get_num_threads()} torch threads", flush=True)
        print("| loader workers | plain samples/s | augmented samples/s |")
        print("| ---: | ---: | ---: |")
        for workers in args.workers:
            plain = loader_rate(dataset, workers, device, False, args.seconds, epoch=1)
            augmented = loader_rate(dataset, workers, device, True, args.seconds, epoch=2)
            print(f"| {workers} | {plain:,.0f} | {augmented:,.0f} |", flush=True)
        rate = warp_rate(args.input_size, device, args.seconds)
        print(f"the warp alone (draws, affine grid, grid_sample, keypoints), batch {BATCH} at {args.input_size} px "
              f"on {device}: {rate:,.0f} samples/s")
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
