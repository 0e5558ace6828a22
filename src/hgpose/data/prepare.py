"""Building the prepared crop cache (`hgpose prepare`): every kept instance cropped once by worker
processes into a temporary folder, swapped into place whole. The format and its reader are in
hgpose.data.cache; what a kill at any moment leaves, and how the next prepare clears it, is below."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import multiprocessing
import os
import re
import shutil
import signal
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from hgpose.data.cache import CACHE_FORMAT, check_cache, fingerprint
from hgpose.data.coco import load_annotation_file
from hgpose.data.images import crop_file, single_threaded_opencv
from hgpose.data.person_index import PersonIndex, split_name
from hgpose.runtime.files import TEMP_PREFIX, UserError, atomic_write_json
from hgpose.runtime.progress import progress_bar

# --- building -----------------------------------------------------------------------------------


def prepare_cache(annotation_file, image_dir, input_size: int, cache_dir=None, progress: bool = True, *,
                  workers: int | None = None, index: PersonIndex | None = None, force: bool = False) -> Path:
    """Build the cache for one annotation file unless a current one exists; rebuild a stale one.

    index: the file's full PersonIndex if already loaded (saves parsing the JSON again).
    workers: processes that decode and crop (default: the CPUs this process may use).
    Two prepares of the same cache folder at once: the second waits for the first and then finds
    its cache current. A file whose instances all fail to crop gets no cache (UserError).
    """
    annotation_file, image_dir = Path(annotation_file), Path(image_dir)
    status = check_cache(annotation_file, image_dir, input_size, cache_dir)
    name = split_name(annotation_file)
    if status.state == "current" and not force:
        with _exclusive(status.path.parent, wait=False) as free:
            if free:  # no prepare is writing here: what a killed one left is stale
                sweep_stale_temp_folders(status.path.parent)
        print(f"cache for {name} is current: {status.path}", file=sys.stderr)
        return status.path
    seen = _inode(status.path)
    with _exclusive(status.path.parent):
        sweep_stale_temp_folders(status.path.parent)  # we hold the lock: nobody else is writing here
        again = check_cache(annotation_file, image_dir, input_size, cache_dir)
        if again.state == "current" and (not force or _inode(again.path) != seen):
            print(f"cache for {name} is current (built by another prepare meanwhile): {again.path}",
                  file=sys.stderr)
            return again.path
        why = "forced" if status.state == "current" else status.reason
        verb = "building" if status.state == "missing" else "rebuilding"
        print(f"{verb} cache for {name} ({why}): {status.path}", file=sys.stderr)
        if index is None:
            index = load_annotation_file(annotation_file, image_dir, name)
        elif not np.array_equal(index.rows, np.arange(len(index))):
            raise ValueError("prepare_cache needs the full index of the annotation file, not a subset")
        if len(index) == 0:
            raise UserError(f"{annotation_file}: no person instance to crop; no cache written")
        _build(index, status.path, int(input_size), fingerprint(annotation_file, input_size), workers, progress)
    return status.path


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


@contextmanager
def _exclusive(folder: Path, wait: bool = True):
    """Hold an exclusive lock on the cache folder's parent (flock: released when the process dies,
    however it dies, and it leaves no lock file behind). Every prepare writing in `folder` holds it,
    so its holder may treat any temp folder there as stale. With wait=False, yields whether the lock
    was free instead of waiting for it."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                yield False
                return
            print(f"waiting for another hgpose prepare writing in {folder}", file=sys.stderr)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield True
    finally:
        os.close(fd)  # releases the lock


def _build(index: PersonIndex, path: Path, size: int, key: dict, workers, progress: bool) -> None:
    n = len(index)
    path.parent.mkdir(parents=True, exist_ok=True)
    needed = n * 3 * size * size
    free = shutil.disk_usage(path.parent).free
    if needed > free:
        raise UserError(f"{path.parent}: the cache needs {needed / 1e9:.1f} GB, {free / 1e9:.1f} GB free "
                        "(use --cache-dir to put it elsewhere)")
    tmp = path.parent / f"{TEMP_PREFIX}{path.name}.new-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        crops_file = tmp / "crops.u8"
        _reserve(crops_file, needed, path.parent)
        problems, warnings = _crop_all(index, crops_file, size, workers, progress)
        fd = os.open(crops_file, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        valid = np.ones(n, dtype=bool)
        valid[list(problems)] = False
        unreadable = _by_image(index, problems, "problem")
        if not valid.any():  # a cache of nothing but invalid rows must never read as current
            first = next(iter(unreadable.items()))
            raise UserError(f"{index.annotation_file}: none of its {n} instances could be cropped (e.g. "
                            f"{index.image_dir / first[0]}: {first[1]['problem']}); no cache written")
        np.save(tmp / "valid.npy", valid)
        np.savez(tmp / "table.npz", ann_ids=index.ann_ids, image_ids=index.image_ids,
                 boxes=index.crop_boxes(), keypoints=index.keypoints)
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
            # images a pixel off their annotated size, used as decoded (hgpose.data.images.check_size)
            "size_warnings": [{"file_name": k, **v} for k, v in _by_image(index, warnings, "warning").items()],
        })
        _fsync_dir(tmp)
        _swap_into_place(tmp, path)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(f"{path.parent}: disk full while writing the cache "
                            "(use --cache-dir to put it elsewhere)") from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _by_image(index: PersonIndex, by_row: dict[int, str], key: str) -> dict[str, dict]:
    """{file_name: {key: message, "instances": count}} from {row: message}, in row order."""
    images: dict[str, dict] = {}
    for row, message in sorted(by_row.items()):
        entry = images.setdefault(index.file_names[index.image_index[row]], {key: message, "instances": 0})
        entry["instances"] += 1
    return images


def _reserve(crops_file: Path, size: int, where: Path) -> None:
    """Create crops_file with all its blocks allocated, so that no write can meet a full disk."""
    fd = os.open(crops_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    try:
        if size:
            os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        raise UserError(f"{where}: cannot reserve {size / 1e9:.2f} GB for the cache "
                        f"({exc.strerror or exc}; use --cache-dir to put it elsewhere)") from None
    finally:
        os.close(fd)


def _crop_all(index: PersonIndex, crops_file: Path, size: int, workers, progress: bool):
    """Crop every row into crops_file, decoding each image once; returns ({row: problem} for the rows
    not cropped, {row: warning} for those cropped from an image a pixel off its annotated size).

    With several workers: a process pool whose workers ignore Ctrl-C (the parent alone stops, with
    one line) and whose death ends the run with one line (the pool reports it broken; never a hang).
    """
    n = len(index)
    order = np.argsort(index.image_index, kind="stable")
    starts = np.flatnonzero(np.diff(index.image_index[order], prepend=-1)) if n else np.zeros(0, np.int64)
    per_image = np.split(order, starts[1:]) if n else []
    boxes, extents = index.crop_boxes(), index.annotation_extents()
    jobs = [
        (str(index.image_path(rows[0])), tuple(index.image_sizes[index.image_index[rows[0]]]), rows, boxes[rows],
         tuple(extents[rows].max(axis=0)))
        for rows in per_image
    ]
    workers = workers or len(os.sched_getaffinity(0))
    workers = max(1, min(workers, len(jobs) // 8))  # a pool is not worth starting for a few images
    per_chunk = int(np.clip(len(jobs) // (workers * 8), 1, 64))
    chunks = [jobs[i : i + per_chunk] for i in range(0, len(jobs), per_chunk)]
    problems: dict[int, str] = {}
    warnings: dict[int, str] = {}
    bar = progress_bar(total=n, desc=f"prepare {index.split} ({size}px)", unit="crop", disable=not progress,
               dynamic_ncols=True)
    try:
        if workers == 1:
            cropper = _Cropper(crops_file, size)
            try:
                _collect(map(cropper, chunks), problems, warnings, bar)
            finally:
                cropper.close()
        else:
            _crop_in_pool(chunks, crops_file, size, workers, problems, warnings, bar)
    finally:
        bar.close()
    return problems, warnings


def _crop_in_pool(chunks, crops_file: Path, size: int, workers: int, problems: dict, warnings: dict, bar) -> None:
    single_threaded_opencv()  # before the fork: see hgpose.data.loader
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                               initializer=_init_worker, initargs=(str(crops_file), size))
    try:
        pending = {pool.submit(_crop_in_worker, chunk) for chunk in chunks}
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            _collect((f.result() for f in finished), problems, warnings, bar)
    except BrokenProcessPool:
        raise UserError(f"{crops_file.parent}: a prepare worker process died (killed, or out of memory?); "
                        "no cache written, run `hgpose prepare` again") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _collect(results, problems: dict, warnings: dict, bar) -> None:
    for done, bad, warned in results:
        problems.update(bad)
        warnings.update(warned)
        bar.update(done)


class _Cropper:
    """Decodes a chunk's images and writes each crop at its row's offset with pwrite."""

    def __init__(self, crops_file, size: int):
        self.size = size
        self.row_bytes = 3 * size * size
        self.fd = os.open(crops_file, os.O_WRONLY | os.O_CLOEXEC)

    def close(self) -> None:
        os.close(self.fd)

    def __call__(self, chunk) -> tuple[int, list, list]:
        done, bad, warned = 0, [], []
        for path, image_size, rows, boxes, extent in chunk:
            result = crop_file(Path(path), boxes, self.size, image_size, extent=extent)
            if result.problem:
                bad.extend((int(row), result.problem) for row in rows)
            else:
                for row, crop in zip(rows, result.crops):
                    self._write(memoryview(crop).cast("B"), int(row) * self.row_bytes)
                if result.warning:
                    warned.extend((int(row), result.warning) for row in rows)
            done += len(rows)
        return done, bad, warned

    def _write(self, data: memoryview, offset: int) -> None:
        while len(data):
            written = os.pwrite(self.fd, data, offset)
            data, offset = data[written:], offset + written


_WORKER_CROPPER: _Cropper | None = None


def _init_worker(crops_file: str, size: int) -> None:
    global _WORKER_CROPPER
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent handles it
    _WORKER_CROPPER = _Cropper(crops_file, size)


def _crop_in_worker(chunk):
    return _WORKER_CROPPER(chunk)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _swap_into_place(tmp: Path, path: Path) -> None:
    """Put the finished folder `tmp` at `path` so that a kill at any moment leaves a cache there.

    With an old cache in place the two folders are exchanged in one step (renameat2 RENAME_EXCHANGE),
    then the old one, now at the temp name, is deleted. Where the file system cannot exchange, the old
    cache is renamed aside first; a kill between that and the second rename is undone by the next
    prepare (sweep_stale_temp_folders puts the old cache back).
    """
    if path.exists() and _exchange(tmp, path):
        _fsync_dir(path.parent)
        shutil.rmtree(tmp, ignore_errors=True)  # the old cache
        return
    old = None
    if path.exists():
        old = path.parent / f"{TEMP_PREFIX}{path.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.rename(path, old)
    os.rename(tmp, path)
    _fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap the names of `a` and `b` (Linux renameat2); False where that is unsupported."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


# a cache's temp folders; not the index cache's atomic writes beside them (mkdtemp names hold no "-")
_CACHE_TEMP = re.compile(re.escape(TEMP_PREFIX) + r"(.+)\.(new|old)-\d+")
_LEGACY_TEMP = re.compile(r"\.[^/]+_\d+\.(tmp|old)-\d+")  # `.train2017_256.tmp-1234`, before TEMP_PREFIX


def sweep_stale_temp_folders(folder: Path) -> list[Path]:
    """Remove the temp folders killed prepares left in `folder` (one holds a full-size crops.u8),
    first putting back an old cache that a kill between the fallback swap's two renames left aside.
    Call only while holding _exclusive(folder): then no live prepare owns any of them.
    Only the names prepare gives are touched: `.hgpose-tmp-NAME.new-PID` / `.old-PID`, and the
    `.NAME.tmp-PID` / `.NAME.old-PID` folders of older versions."""
    removed = []
    for entry in sorted(Path(folder).glob(".*")):
        name = entry.name
        if not entry.is_dir() or entry.is_symlink():
            continue
        ours = _CACHE_TEMP.fullmatch(name)
        if ours and ours.group(2) == "old" and not (entry.parent / ours.group(1)).exists():
            os.rename(entry, entry.parent / ours.group(1))  # the cache as it was before the interrupted swap
            continue
        if ours or _LEGACY_TEMP.fullmatch(name):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed
