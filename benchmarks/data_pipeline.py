"""Data path at COCO scale: samples/s, bytes read per sample and CPU per sample, warm and cold.

Builds a prepared cache the size of train2017's (149,813 people) cheaply: the crops are written
directly (random pixels: the loader never looks at them), with a generated index and a stub
annotation file, so no JPEG is decoded. Then, for the loader before this change (one sample per
item, copied out of a memory map, collated by the DataLoader) and after (whole batches read with
positioned reads, hgpose.data.loader.CachedBatches), with 0, 1 and 2 worker processes:

  warm  the rows are in the page cache (a prefix of rows that fits in RAM when the cache does not)
  cold  the cache file dropped from the page cache first (posix_fadvise DONTNEED; the file is
        fsynced, so its pages are clean and really go), so every byte comes from the disk

it prints samples/s (wall clock), disk bytes read per sample (/proc/self/io read_bytes, worker
processes included once they are reaped) and CPU-seconds per 1,000 samples (this process and its
workers). Also: the annotation index cache's load time for 149,813 people, and `hgpose prepare`'s
disk bytes read per crop written on generated JPEGs read cold.

Targets on the project's 2-core CPU (after, warm, 2 workers): >= 5,000 samples/s, >= 2,500 samples
per CPU-second, and so a data-only epoch of 149,813 samples in <= 60 s.

A 149,813-row cache at 256 px is 29.5 GB: the benchmark checks the free space of --dir and uses
fewer rows when it must (it says so). --quick: 4,000 rows at 64 px, 0.5 s runs (a smoke test).

    python benchmarks/data_pipeline.py [--rows 149813] [--input-size 256] [--seconds 8] [--dir /tmp] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from hgpose.data.cache import CACHE_FORMAT, fingerprint
from hgpose.data.coco import annotation_path, load_split
from hgpose.data.dataset import PersonDataset
from hgpose.data.images import single_threaded_opencv
from hgpose.data.index_cache import read_index, write_index
from hgpose.data.loader import EpochSampler, make_loader, seed_worker
from hgpose.data.person_index import PersonIndex
from hgpose.data.prepare import prepare_cache

COCO_PEOPLE = 149_813
BATCH = 16


def io_read_bytes() -> int:
    """Disk bytes read by this process and its reaped children."""
    for line in open("/proc/self/io"):
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    return 0


def cpu_seconds() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def drop_from_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def warm_up(path: Path, nbytes: int) -> None:
    with open(path, "rb", buffering=0) as f:
        while nbytes > 0 and (block := f.read(min(64 << 20, nbytes))):
            nbytes -= len(block)


# --- a COCO-scale cache, built without decoding anything -----------------------------------------------


def synthetic_index(root: Path, rows: int, seed: int = 0) -> PersonIndex:
    rng = np.random.default_rng(seed)
    images = max(1, rows * 2 // 3)  # about 1.5 people per image, as in train2017
    image_index = np.sort(rng.integers(0, images, rows)).astype(np.int32)
    sizes = np.tile(np.array([[640, 480]], np.int64), (images, 1))
    xy = rng.uniform(0, 300, (rows, 2))
    wh = rng.uniform(40, 300, (rows, 2))
    bboxes = np.concatenate([xy, wh], axis=1).astype(np.float32)
    points = np.concatenate([xy[:, None] + rng.uniform(0, 1, (rows, 17, 2)) * wh[:, None],
                             np.full((rows, 17, 1), 2.0)], axis=-1).astype(np.float32)
    stub = annotation_path(root, "train2017")
    stub.parent.mkdir(parents=True, exist_ok=True)
    stub.write_text(json.dumps({"note": f"benchmark stand-in for {rows} people"}))
    return PersonIndex(annotation_file=stub, image_dir=root / "train2017", split="train2017",
                       rows=np.arange(rows, dtype=np.int64), image_ids=image_index.astype(np.int64) + 1,
                       ann_ids=np.arange(1, rows + 1, dtype=np.int64), image_index=image_index,
                       file_names=[f"{i + 1:012d}.jpg" for i in range(images)], image_sizes=sizes,
                       bboxes=bboxes, keypoints=points)


def write_cache(index: PersonIndex, size: int, cache_dir: Path) -> Path:
    """The folder `hgpose prepare` would make, its crops written sequentially as random bytes."""
    path = cache_dir / f"train2017_{size}"
    path.mkdir(parents=True, exist_ok=True)
    row_bytes, rows = 3 * size * size, len(index)
    block = np.random.default_rng(0).integers(0, 256, max(1, (64 << 20) // row_bytes) * row_bytes, np.uint8)
    with open(path / "crops.u8", "wb", buffering=0) as f:
        left = rows * row_bytes
        while left:
            left -= f.write(memoryview(block)[: min(len(block), left)])
        os.fsync(f.fileno())
    np.save(path / "valid.npy", np.ones(rows, bool))
    np.savez(path / "table.npz", ann_ids=index.ann_ids, image_ids=index.image_ids, boxes=index.crop_boxes(),
             keypoints=index.keypoints)
    (path / "meta.json").write_text(json.dumps({
        "format": CACHE_FORMAT, "fingerprint": fingerprint(index.annotation_file, size), "count": rows,
        "input_size": size, "invalid": 0, "unreadable": []}))
    return path


# --- the loader before this change: per-sample memory-map copies, collated ---------------------------------


class MemmapSamples(Dataset):
    def __init__(self, dataset: PersonDataset):
        self.path, self.size = dataset.cache_path / "crops.u8", dataset.input_size
        self.rows, self.keypoints, self.visibility = dataset.index.rows, dataset.keypoints, dataset.visibility
        self.count = int(json.loads((dataset.cache_path / "meta.json").read_text())["count"])
        self.crops = None

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        if self.crops is None:
            self.crops = np.memmap(self.path, np.uint8, "r", shape=(self.count, 3, self.size, self.size))
        return {"image": torch.from_numpy(np.array(self.crops[self.rows[i]])),
                "keypoints": torch.from_numpy(self.keypoints[i].copy()),
                "visibility": torch.from_numpy(self.visibility[i].copy()),
                "index": torch.tensor(i), "valid": torch.tensor(True)}

    def __getstate__(self):
        return {**self.__dict__, "crops": None}


def before_loader(dataset: PersonDataset, workers: int, epoch: int) -> DataLoader:
    if workers:
        single_threaded_opencv()
    return DataLoader(MemmapSamples(dataset), batch_size=BATCH,
                      sampler=EpochSampler(len(dataset), shuffle=True, seed=0, epoch=epoch), num_workers=workers,
                      worker_init_fn=seed_worker if workers else None, prefetch_factor=4 if workers else None)


def after_loader(dataset: PersonDataset, workers: int, epoch: int) -> DataLoader:
    return make_loader(dataset, BATCH, shuffle=True, seed=0, epoch=epoch, workers=workers)


def measure(make, dataset, workers: int, seconds: float, max_samples: int, epoch: int) -> dict:
    """Run one loader for `seconds` (or max_samples), then shut its workers down (so their I/O and
    CPU count here) and return the figures."""
    read0, cpu0, start = io_read_bytes(), cpu_seconds(), time.perf_counter()
    n = 0
    loader = make(dataset, workers, epoch)
    batches = iter(loader)
    for batch in batches:
        n += len(batch["valid"])
        if time.perf_counter() - start >= seconds or n >= max_samples:
            break
    wall = time.perf_counter() - start
    del batches, loader  # joins the workers
    return {"samples": n, "per_s": n / wall, "bytes_per_sample": (io_read_bytes() - read0) / max(n, 1),
            "cpu_per_1000": 1000 * (cpu_seconds() - cpu0) / max(n, 1)}


# --- prepare: bytes read per crop written ------------------------------------------------------------------


def prepare_figures(tmp: Path, images: int, size: int) -> dict:
    from hgpose.synth import generate_dataset

    root = tmp / "jpegs"
    generate_dataset(root, images, 0, image_size=(640, 480), seed=0, progress=False)
    index = load_split(root, "train2017")
    jpegs = sorted((root / "train2017").glob("*.jpg"))
    for path in jpegs:
        drop_from_page_cache(path)
    read0, start = io_read_bytes(), time.perf_counter()
    path = prepare_cache(annotation_path(root, "train2017"), root / "train2017", size, tmp / "prepared",
                         progress=False, index=index)
    seconds = time.perf_counter() - start
    read = io_read_bytes() - read0
    return {"crops": len(index), "crop_bytes": len(index) * 3 * size * size, "read": read,
            "jpeg_bytes": sum(p.stat().st_size for p in jpegs), "seconds": seconds, "path": path}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=COCO_PEOPLE, help="people in the cache (train2017: 149,813)")
    parser.add_argument("--input-size", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=8.0, help="time per measurement")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="where the cache is built")
    parser.add_argument("--prepare-images", type=int, default=300, help="generated JPEGs for the prepare figures")
    parser.add_argument("--quick", action="store_true", help="4,000 rows at 64 px, 0.5 s runs: a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.input_size, args.seconds, args.prepare_images = 4000, 64, 0.5, 24
    torch.set_num_threads(1)
    row_bytes = 3 * args.input_size ** 2
    args.dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(args.dir).free
    rows = min(args.rows, int(free * 0.8) // row_bytes)
    if rows < args.rows:
        print(f"NOTE: {args.rows} rows at {args.input_size} px need {args.rows * row_bytes / 1e9:.1f} GB; "
              f"{args.dir} has {free / 1e9:.1f} GB free, so this run uses {rows} rows", file=sys.stderr)
    memory = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")

    with tempfile.TemporaryDirectory(prefix="hgpose-bench-", dir=args.dir) as tmp:
        tmp = Path(tmp)
        index = synthetic_index(tmp / "coco", rows)
        started = time.perf_counter()
        cache = write_cache(index, args.input_size, tmp / "cache")
        print(f"cache: {rows} rows x {args.input_size} px = {rows * row_bytes / 1e9:.2f} GB written in "
              f"{time.perf_counter() - started:.0f} s ({cache}); free memory {memory / 1e9:.1f} GB; "
              f"{len(os.sched_getaffinity(0))} CPUs; load average {os.getloadavg()[0]:.1f}", flush=True)

        started = time.perf_counter()
        write_index(tmp / "index.npz", index)
        started = time.perf_counter()
        loaded = read_index(tmp / "index.npz", index.annotation_file, index.image_dir, "train2017")
        index_seconds = time.perf_counter() - started
        assert loaded is not None and np.array_equal(loaded.keypoints, index.keypoints)

        dataset = PersonDataset(index, args.input_size, cache=cache)
        warm_rows = min(rows, int(memory * 0.5) // row_bytes)
        warm_set = PersonDataset(index.subset(np.arange(warm_rows)), args.input_size, cache=cache)
        results = []
        for state in ("warm", "cold"):
            for name, make in (("before: memmap, per sample", before_loader),
                               ("after: batched preadv", after_loader)):
                for workers in args.workers:
                    if state == "cold":
                        drop_from_page_cache(cache / "crops.u8")
                        figures = measure(make, dataset, workers, args.seconds, rows, epoch=1 + workers)
                    else:
                        warm_up(cache / "crops.u8", warm_rows * row_bytes)
                        figures = measure(make, warm_set, workers, args.seconds, 10 * warm_rows, epoch=1 + workers)
                    results.append((state, name, workers, figures))
                    print(f"  {state} {name:28s} {workers} workers: {figures['per_s']:8.0f} samples/s", flush=True)

        prep = prepare_figures(tmp, args.prepare_images, args.input_size)

    print(f"\nData path: {rows} cached people at {args.input_size} px ({row_bytes / 1e3:.0f} KB a crop), "
          f"batch {BATCH}; warm = first {warm_rows} rows in the page cache, cold = file dropped from it first")
    print("| cache | loader | workers | samples/s | disk bytes read / sample | CPU s / 1,000 samples |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for state, name, workers, f in results:
        print(f"| {state} | {name} | {workers} | {f['per_s']:,.0f} | {f['bytes_per_sample'] / 1e3:,.1f} KB "
              f"({f['bytes_per_sample'] / row_bytes:.2f} x crop) | {f['cpu_per_1000']:.3f} |")
    best = max((f for s, n, w, f in results if s == "warm" and n.startswith("after") and w == max(args.workers)),
               key=lambda f: f["per_s"], default=None)
    if best:
        per_cpu = 1000 / best["cpu_per_1000"] if best["cpu_per_1000"] else float("inf")
        print(f"\nafter, warm, {max(args.workers)} workers: {best['per_s']:,.0f} samples/s (target >= 5,000), "
              f"{per_cpu:,.0f} samples per CPU-second (target >= 2,500); a data-only epoch of "
              f"{COCO_PEOPLE:,} samples: {COCO_PEOPLE / best['per_s']:.0f} s (target <= 60 s)")
    print(f"annotation index cache: {rows:,} people loaded in {index_seconds * 1e3:.0f} ms")
    print(f"hgpose prepare, {prep['crops']} crops from cold JPEGs: read {prep['read'] / 1e6:.1f} MB from disk "
          f"for {prep['jpeg_bytes'] / 1e6:.1f} MB of JPEGs and {prep['crop_bytes'] / 1e6:.1f} MB of crops written "
          f"({prep['read'] / max(prep['crops'], 1) / 1e3:.1f} KB read per crop written, "
          f"{prep['read'] / max(prep['jpeg_bytes'], 1):.2f} x the JPEG bytes); {prep['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
