"""Small file helpers shared by every command: atomic writes and the user-facing error type."""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


class UserError(Exception):
    """A problem with the user's input: the CLI prints it as one line and exits with code 2."""


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; on success it is fsynced and renamed onto `path`.

    A crash at any moment leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    with disk_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        os.close(fd)
    tmp = Path(tmp)
    try:
        with disk_errors(path):
            yield tmp
            # after the writer: safetensors writes its own 0600 temp file and renames it onto `tmp`
            os.chmod(tmp, 0o666 & ~_umask())  # the permissions open() would give
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


TEMP_SUFFIX = ".tmp"
DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def is_disk_full(exc: BaseException) -> bool:
    """An OSError for a full disk or quota, or a library's error that wraps one in its message
    (safetensors raises its own error type with the OS message in it)."""
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
        return True
    return any(os.strerror(code) in str(exc) for code in DISK_FULL_ERRNOS)


@contextmanager
def disk_errors(path: str | Path):
    """Turn a full disk (or quota) while writing `path` into a one-line UserError naming it."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        code = exc.errno if isinstance(exc, OSError) and exc.errno else errno.ENOSPC
        reason = os.strerror(code)
        raise UserError(f"{path}: cannot write ({reason}); free some space and run again") from None


def sweep_temp_files(folder: str | Path) -> list[Path]:
    """Remove what a killed atomic write left in `folder`: our `.NAME.XXXX.tmp` files and the
    `.tmpXXXXXX` files safetensors writes before its rename. Call only on folders this process owns."""
    removed = []
    for leftover in Path(folder).glob(".*"):
        ours = leftover.name.endswith(TEMP_SUFFIX) and leftover.name.count(".") >= 3
        safetensors_own = leftover.name.startswith(".tmp") and len(leftover.name) == 10
        if (ours or safetensors_own) and leftover.is_file():
            leftover.unlink(missing_ok=True)
            removed.append(leftover)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data, indent: int | None = 2) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=indent) + "\n")


def read_json(path: str | Path, what: str = "JSON file"):
    """Parse a JSON file or raise a one-line UserError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} not found")
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: malformed JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: malformed JSON (not UTF-8 text)") from None


@contextmanager
def exclusive_lock(path: str | Path, busy_message: str):
    """Hold an exclusive flock on `path` (created if absent) for the `with` block, or raise
    UserError(busy_message) at once if another process holds it. The kernel drops the lock when the
    holder dies, so a killed process never leaves a stale lock behind."""
    import fcntl

    path = Path(path)
    with disk_errors(path):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UserError(busy_message) from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # who holds it, for a curious user; the flock is what counts
        yield
    finally:
        os.close(fd)  # releases the lock


_SHA1_MEMO: dict[tuple, str] = {}


def file_sha1(path: str | Path) -> str:
    """A file's content hash (about 0.5 s for the 450 MB train2017 annotations), remembered per
    (path, size, mtime) so that a run reading the same file twice hashes it once."""
    path = Path(path)
    with disk_errors(path):
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in _SHA1_MEMO:
            digest = hashlib.sha1()
            with open(path, "rb") as f:
                while block := f.read(8 << 20):
                    digest.update(block)
            _SHA1_MEMO[key] = digest.hexdigest()
    return _SHA1_MEMO[key]


def json_float(x) -> float | None:
    """A float for JSON: NaN (an undefined figure) becomes None (null), as JSON has no NaN."""
    x = float(x)
    return None if math.isnan(x) else x
