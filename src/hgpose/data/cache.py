"""The prepared crop cache: every kept instance of one annotation file cropped once.

Without augmentation a crop is the same every epoch, so `hgpose prepare` decodes each image once
and stores the crops as one raw uint8 array, crops.u8 of shape (N, 3, S, S) RGB in C order, read
back through a memory map: a sample is one contiguous copy, no decoding (thousands per second per
core). Row r is kept instance r of the annotation file (PersonIndex.rows), so the training split
and the validation part held out of it share one cache. Beside it: valid.npy (rows whose image
could not be read), table.npz (annotation ids, image ids, crop boxes, keypoints) and meta.json.

meta.json holds a fingerprint of the source JSON (its sha1) and the crop settings and is written
last, into a temporary folder that is then renamed into place: a folder without a matching
meta.json is never used, so an interrupted prepare leaves nothing that looks complete.
The fingerprint does not cover the image files: after replacing images, run prepare --force.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hgpose.data.coco import INDEX_VERSION, MAX_IMAGE_PIXELS, PersonIndex, load_annotation_file
from hgpose.data.dataset import read_crops
from hgpose.data.loader import single_threaded_opencv
from hgpose.data.transforms import CROP_PADDING
from hgpose.fileio import UserError, atomic_write_json
from hgpose.progress import progress_bar

# Bump when decoding or cropping changes the pixels: old caches then read as stale.
CACHE_VERSION = 1
CACHE_FORMAT = "hgpose crop cache"


@dataclass
class CacheStatus:
    path: Path
    state: str  # "current", "missing" or "stale"
    reason: str = ""

    def verify_rows(self, index: PersonIndex) -> None:
        """Check the cache rows hold this index's instances (the fingerprint makes this a formality)."""
        ann_ids = np.load(self.path / "table.npz")["ann_ids"]
        rows = index.rows
        if len(rows) and (rows.max() >= len(ann_ids) or not np.array_equal(ann_ids[rows], index.ann_ids)):
            raise UserError(f"{self.path}: cache rows do not match {index.annotation_file}; "
                            "run `hgpose prepare --force` to rebuild it")


@dataclass
class OpenCache:
    crops: np.ndarray  # (N, 3, S, S) uint8 memmap
    valid: np.ndarray  # (N,) bool


def split_name(annotation_file: str | Path) -> str:
    return Path(annotation_file).stem.removeprefix("person_keypoints_")


def cache_location(annotation_file, image_dir, input_size: int, cache_dir=None) -> Path:
    """<root>/hgpose_cache/<split>_<input_size>, or <cache_dir>/<split>_<input_size>."""
    base = Path(cache_dir) if cache_dir is not None else Path(image_dir).parent / "hgpose_cache"
    return base / f"{split_name(annotation_file)}_{int(input_size)}"


def fingerprint(annotation_file, input_size: int, padding: float = CROP_PADDING) -> dict:
    path = Path(annotation_file)
    return {
        "source_sha1": _sha1(path),
        "source_bytes": path.stat().st_size,
        "input_size": int(input_size),
        "padding": float(padding),
        "cache_version": CACHE_VERSION,
        "index_version": INDEX_VERSION,
        "max_image_pixels": MAX_IMAGE_PIXELS,
    }


_SHA1_MEMO: dict[tuple, str] = {}


def _sha1(path: Path) -> str:
    """Content hash (about 0.5 s for the 450 MB train2017 file), remembered per (path, size, mtime)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA1_MEMO:
        digest = hashlib.sha1()
        with open(path, "rb") as f:
            while block := f.read(8 << 20):
                digest.update(block)
        _SHA1_MEMO[key] = digest.hexdigest()
    return _SHA1_MEMO[key]


def check_cache(annotation_file, image_dir, input_size: int, cache_dir=None) -> CacheStatus:
    """Whether the default (or cache_dir) cache for this file and input size is current."""
    path = cache_location(annotation_file, image_dir, input_size, cache_dir)
    return check_cache_at(path, annotation_file, input_size)


def check_cache_at(path, annotation_file, input_size: int, require: bool = False) -> CacheStatus:
    """Status of the cache folder `path`; with require=True anything but current is a UserError."""
    path = Path(path)
    status = CacheStatus(path, "missing", "not prepared")
    meta_file = path / "meta.json"
    if meta_file.is_file():
        try:
            meta = json.loads(meta_file.read_text())
            found = meta["fingerprint"] if meta.get("format") == CACHE_FORMAT else None
        except (OSError, ValueError, KeyError, TypeError):
            found = None
        status = CacheStatus(path, "current")
        if not isinstance(found, dict):
            status = CacheStatus(path, "stale", "unreadable meta.json")
        elif Path(annotation_file).is_file():
            reason = _difference(found, fingerprint(annotation_file, input_size))
            if reason:
                status = CacheStatus(path, "stale", reason)
    if require and status.state != "current":
        raise UserError(f"{path}: no current cache ({status.reason}); run `hgpose prepare` to build it")
    return status


def _difference(found: dict, expected: dict) -> str:
    if found.get("source_sha1") != expected["source_sha1"]:
        return "source JSON changed"
    if found.get("input_size") != expected["input_size"] or found.get("padding") != expected["padding"]:
        return "crop settings changed"
    if found != expected:
        return "made by another hgpose version"
    return ""


def find_cache(annotation_file, image_dir, input_size: int, cache_dir=None) -> Path | None:
    """The current cache for this annotation file and input size, or None."""
    status = check_cache(annotation_file, image_dir, input_size, cache_dir)
    return status.path if status.state == "current" else None


def open_cache(path) -> OpenCache:
    path = Path(path)
    meta = read_cache_meta(path)
    n, size = int(meta["count"]), int(meta["input_size"])
    shape = (n, 3, size, size)
    crops = np.memmap(path / "crops.u8", np.uint8, "r", shape=shape) if n else np.zeros(shape, np.uint8)
    return OpenCache(crops=crops, valid=np.load(path / "valid.npy"))


def read_cache_meta(path) -> dict:
    return json.loads((Path(path) / "meta.json").read_text())


# --- building -----------------------------------------------------------------------------------


def prepare_cache(annotation_file, image_dir, input_size: int, cache_dir=None, progress: bool = True, *,
                  workers: int | None = None, index: PersonIndex | None = None, force: bool = False) -> Path:
    """Build the cache for one annotation file unless a current one exists; rebuild a stale one.

    index: the file's full PersonIndex if already loaded (saves parsing the JSON again).
    workers: processes that decode and crop (default: the CPUs this process may use).
    """
    annotation_file, image_dir = Path(annotation_file), Path(image_dir)
    status = check_cache(annotation_file, image_dir, input_size, cache_dir)
    name = split_name(annotation_file)
    if status.state == "current" and not force:
        print(f"cache for {name} is current: {status.path}", file=sys.stderr)
        return status.path
    why = "forced" if status.state == "current" else status.reason
    verb = "building" if status.state == "missing" else "rebuilding"
    print(f"{verb} cache for {name} ({why}): {status.path}", file=sys.stderr)
    if index is None:
        index = load_annotation_file(annotation_file, image_dir, name)
    elif not np.array_equal(index.rows, np.arange(len(index))):
        raise ValueError("prepare_cache needs the full index of the annotation file, not a subset")
    _build(index, status.path, int(input_size), fingerprint(annotation_file, input_size), workers, progress)
    return status.path


def _build(index: PersonIndex, path: Path, size: int, key: dict, workers, progress: bool) -> None:
    n = len(index)
    path.parent.mkdir(parents=True, exist_ok=True)
    needed = n * 3 * size * size
    free = shutil.disk_usage(path.parent).free
    if needed > free:
        raise UserError(f"{path.parent}: the cache needs {needed / 1e9:.1f} GB, {free / 1e9:.1f} GB free "
                        "(use --cache-dir to put it elsewhere)")
    _remove_leftovers(path)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        crops_file = tmp / "crops.u8"
        with open(crops_file, "wb") as f:
            f.truncate(needed)
        problems = _crop_all(index, crops_file, size, workers, progress)
        with open(crops_file, "rb+") as f:
            os.fsync(f.fileno())
        valid = np.ones(n, dtype=bool)
        valid[list(problems)] = False
        np.save(tmp / "valid.npy", valid)
        np.savez(tmp / "table.npz", ann_ids=index.ann_ids, image_ids=index.image_ids,
                 boxes=index.crop_boxes(), keypoints=index.keypoints)
        unreadable: dict[str, dict] = {}
        for row, problem in sorted(problems.items()):
            name = index.file_names[index.image_index[row]]
            entry = unreadable.setdefault(name, {"problem": problem, "instances": 0})
            entry["instances"] += 1
        atomic_write_json(tmp / "meta.json", {  # last: only now does the folder look complete
            "format": CACHE_FORMAT,
            "fingerprint": key,
            "count": n,
            "input_size": size,
            "layout": "crops.u8: uint8 (count, 3, input_size, input_size) RGB, C order; row = kept instance",
            "source": str(index.annotation_file),
            "image_dir": str(index.image_dir),
            "invalid": int(n - valid.sum()),
            "unreadable": [{"file_name": k, **v} for k, v in unreadable.items()],
        })
        _fsync_dir(tmp)
        _swap_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _crop_all(index: PersonIndex, crops_file: Path, size: int, workers, progress: bool) -> dict[int, str]:
    """Crop every row into crops_file, decoding each image once; returns {row: problem} for bad ones."""
    n = len(index)
    order = np.argsort(index.image_index, kind="stable")
    starts = np.flatnonzero(np.diff(index.image_index[order], prepend=-1)) if n else np.zeros(0, np.int64)
    per_image = np.split(order, starts[1:]) if n else []
    boxes = index.crop_boxes()
    jobs = [
        (str(index.image_path(rows[0])), tuple(index.image_sizes[index.image_index[rows[0]]]), rows, boxes[rows])
        for rows in per_image
    ]
    workers = workers or len(os.sched_getaffinity(0))
    workers = max(1, min(workers, len(jobs) // 8))  # a pool is not worth starting for a few images
    per_chunk = int(np.clip(len(jobs) // (workers * 8), 1, 64))
    chunks = [jobs[i : i + per_chunk] for i in range(0, len(jobs), per_chunk)]
    problems: dict[int, str] = {}
    bar = progress_bar(total=n, desc=f"prepare {index.split} ({size}px)", unit="crop", disable=not progress,
               dynamic_ncols=True)
    try:
        if workers == 1:
            cropper = _Cropper(crops_file, n, size)
            results = map(cropper, chunks)
            _collect(results, problems, bar)
            if cropper.out is not None:
                cropper.out.flush()
        else:
            single_threaded_opencv()  # before the fork: see hgpose.data.loader
            with multiprocessing.Pool(workers, initializer=_init_worker, initargs=(crops_file, n, size)) as pool:
                _collect(pool.imap_unordered(_crop_in_worker, chunks), problems, bar)
    finally:
        bar.close()
    return problems


def _collect(results, problems: dict, bar) -> None:
    for done, bad in results:
        problems.update(bad)
        bar.update(done)


class _Cropper:
    def __init__(self, crops_file: Path, n: int, size: int):
        self.size = size
        self.out = np.memmap(crops_file, np.uint8, "r+", shape=(n, 3, size, size)) if n else None

    def __call__(self, chunk) -> tuple[int, list]:
        done, bad = 0, []
        for path, image_size, rows, boxes in chunk:
            crops, problem = read_crops(Path(path), boxes, self.size, image_size)
            if problem:
                bad.extend((int(row), problem) for row in rows)
            else:
                for row, crop in zip(rows, crops):
                    self.out[row] = crop
            done += len(rows)
        return done, bad


_WORKER_CROPPER: _Cropper | None = None


def _init_worker(crops_file: Path, n: int, size: int) -> None:
    global _WORKER_CROPPER
    _WORKER_CROPPER = _Cropper(crops_file, n, size)


def _crop_in_worker(chunk):
    return _WORKER_CROPPER(chunk)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _swap_into_place(tmp: Path, path: Path) -> None:
    """Rename the finished folder onto `path`; an old cache is moved aside first, then deleted."""
    old = None
    if path.exists():
        old = path.parent / f".{path.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.rename(path, old)
    os.rename(tmp, path)
    _fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _remove_leftovers(path: Path) -> None:
    """Delete temporary folders of earlier prepares that were killed (their process is gone)."""
    for leftover in list(path.parent.glob(f".{path.name}.tmp-*")) + list(path.parent.glob(f".{path.name}.old-*")):
        pid = leftover.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
