"""The prepared crop cache: every kept instance of one annotation file cropped once.

Without augmentation a crop is the same every epoch, so `hgpose prepare` decodes each image once
and stores the crops as one raw uint8 array, crops.u8 of shape (N, 3, S, S) RGB in C order. Row r
is kept instance r of the annotation file (PersonIndex.rows), so the training split and the
validation part held out of it share one cache. Beside it: valid.npy (rows whose image could not
be read), table.npz (annotation ids, image ids, crop boxes, keypoints) and meta.json.

Both directions use explicit positioned I/O on a file descriptor, never a memory map: a map's
page faults read megabytes of read-ahead around every evicted page, so with a cache larger than RAM
a 196 KB sample cost ~6.5 MB of disk reads, and writing crops through a shared map read the cache
back ~5 times over (and a full disk killed the writers with SIGBUS). Now prepare reserves the
file's space first (posix_fallocate: a full disk is one error line before any work) and its workers
pwrite each crop; CacheReader reads exactly the rows asked for with preadv (one call per run of
consecutive rows, straight into the caller's array) on a descriptor advised POSIX_FADV_RANDOM.

meta.json holds a fingerprint of the source JSON (its sha1) and the crop settings and is written
last, into a temporary folder (.hgpose-tmp-NAME.new-PID) that is then swapped into place: a folder
without a matching meta.json is never used, so an interrupted prepare leaves nothing that looks
complete, and the next prepare removes what it left.
The fingerprint does not cover the image files: after replacing images, run prepare --force.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hgpose.data.images import MAX_IMAGE_PIXELS
from hgpose.data.person_index import INDEX_VERSION, PersonIndex, split_name
from hgpose.data.transforms import CROP_PADDING
from hgpose.runtime.files import UserError, file_sha1

# Bump when decoding or cropping changes the pixels: old caches then read as stale.
CACHE_VERSION = 3  # 2: JPEGs with data after their end marker decode; 3: a pixel-off image is used
# only when its annotation fits it (as training from the files does), and is listed in meta.json
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


def cache_location(annotation_file, image_dir, input_size: int, cache_dir=None) -> Path:
    """<root>/hgpose_cache/<split>_<input_size>, or <cache_dir>/<split>_<input_size>."""
    base = Path(cache_dir) if cache_dir is not None else Path(image_dir).parent / "hgpose_cache"
    return base / f"{split_name(annotation_file)}_{int(input_size)}"


def fingerprint(annotation_file, input_size: int, padding: float = CROP_PADDING) -> dict:
    path = Path(annotation_file)
    return {
        "source_sha1": file_sha1(path),
        "source_bytes": path.stat().st_size,
        "input_size": int(input_size),
        "padding": float(padding),
        "cache_version": CACHE_VERSION,
        "index_version": INDEX_VERSION,
        "max_image_pixels": MAX_IMAGE_PIXELS,
    }


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


def open_cache(path) -> CacheReader:
    return CacheReader(path)


# at most this many buffers per preadv call (Linux's IOV_MAX)
_MAX_BUFFERS = 1024


class CacheReader:
    """Reads rows of a cache's crops.u8: exactly the bytes asked for, no read-ahead, no memory map.

    read_rows sorts the rows it is given and issues one preadv per run of consecutive rows, each
    row's bytes landing directly in its slot of the output array. The descriptor is opened lazily
    and again in each process that uses it (a forked DataLoader worker gets its own), advised
    POSIX_FADV_RANDOM so the kernel reads no more than each call asks for.
    """

    def __init__(self, path):
        self.path = Path(path)
        meta = read_cache_meta(self.path)
        self.count, self.input_size = int(meta["count"]), int(meta["input_size"])
        self.row_shape = (3, self.input_size, self.input_size)
        self.row_bytes = 3 * self.input_size * self.input_size
        self.valid = np.load(self.path / "valid.npy", allow_pickle=False)
        self._fd: int | None = None
        self._pid: int | None = None

    def __getstate__(self):
        return {**self.__dict__, "_fd": None, "_pid": None}

    def __del__(self):
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)

    def _descriptor(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.path / "crops.u8", os.O_RDONLY | os.O_CLOEXEC)
            self._pid = os.getpid()
            os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_RANDOM)
        return self._fd

    def read_rows(self, rows, out: np.ndarray | None = None) -> np.ndarray:
        """Crops of `rows` (any order, repeats allowed) as (k, 3, S, S) uint8, in the order given."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if out is None:
            out = np.empty((len(rows), *self.row_shape), np.uint8)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.count):
            raise IndexError(f"{self.path}: rows outside 0..{self.count - 1}")
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        starts = np.flatnonzero(np.diff(ordered, prepend=-2) != 1)  # where a run of consecutive rows begins
        ends = np.append(starts[1:], len(rows))
        fd = self._descriptor()
        for start, end in zip(starts, ends):
            for first in range(start, end, _MAX_BUFFERS):
                last = min(first + _MAX_BUFFERS, end)
                buffers = [memoryview(out[j]).cast("B") for j in order[first:last]]
                self._read_into(fd, buffers, int(ordered[first]) * self.row_bytes)
        return out

    def _read_into(self, fd: int, buffers: list, offset: int) -> None:
        done, total = os.preadv(fd, buffers, offset), self.row_bytes * len(buffers)
        while done < total:  # a short read: only at the end of a truncated file
            k, within = divmod(done, self.row_bytes)
            got = os.preadv(fd, [buffers[k][within:], *buffers[k + 1 :]], offset + done)
            if got == 0:
                raise UserError(f"{self.path / 'crops.u8'}: shorter than its meta.json says; "
                                "run `hgpose prepare --force` to rebuild it")
            done += got


def read_cache_meta(path) -> dict:
    return json.loads((Path(path) / "meta.json").read_text())
