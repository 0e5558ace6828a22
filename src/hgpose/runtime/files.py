"""Small file helpers shared by every command: atomic writes and the user-facing error type."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import math
import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path


class UserError(Exception):
    """A problem with the user's input: the CLI prints it as one line and exits with code 2."""


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; on success it is fsynced and renamed onto `path`.

    A crash at any moment leaves either the old file or the new one, never half of one. The
    temporary path lies in a private folder named with TEMP_PREFIX, so that whatever a writer makes
    beside it (safetensors writes its own `.tmpXXXXXX` file and renames it onto ours) is inside that
    folder too, and a later sweep removes exactly what hgpose made and nothing a user keeps there.
    """
    path = Path(path)
    with disk_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{path.name}.", dir=path.parent))
    tmp = folder / path.name
    try:
        with disk_errors(path):
            yield tmp
            # after the writer: safetensors writes its own 0600 temp file and renames it onto `tmp`
            os.chmod(tmp, 0o666 & ~_umask())  # the permissions open() would give
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# Every temporary file or folder hgpose makes starts with this; sweeps remove nothing else.
TEMP_PREFIX = ".hgpose-tmp-"
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
    """Remove what a killed atomic write left in `folder`: entries named with TEMP_PREFIX, which only
    hgpose makes. Anything else stays, whatever its name (older hgpose versions named temp files
    `.NAME.XXXX.tmp`, a pattern a user's own files can match, so those are left alone).
    Call only on folders of a run this process holds the lock of."""
    removed = []
    for leftover in Path(folder).glob(f"{TEMP_PREFIX}*"):
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
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


# (device, inode) of the locks this process holds: a POSIX lock never refuses its own process
_HELD_LOCKS: set[tuple[int, int]] = set()


@contextmanager
def exclusive_lock(path: str | Path, busy_message: str):
    """Hold an exclusive lock on `path` (created if absent) for the `with` block, or raise
    UserError(busy_message) at once if another process (or this one) holds it.

    A POSIX record lock (fcntl.lockf), not flock: it belongs to this process alone, so forked
    DataLoader workers do not inherit it, and the kernel drops it the moment this process dies,
    however it dies, even while orphaned workers still hold the descriptor. (An flock belongs to the
    open file, which the workers share: it outlived a SIGKILLed train by seconds. O_CLOEXEC does not
    help: fork keeps descriptors, only exec closes them.)
    The file is opened without following a symbolic link, and one that is not a lock of ours (a
    link, a hard link, something holding other data) is refused, never truncated.
    A POSIX lock is also dropped when its process closes any descriptor of the file: nothing else in
    hgpose opens the lock file, and a second exclusive_lock of it is refused before it opens one.
    """
    path = Path(path)
    if _lock_key(path) in _HELD_LOCKS:  # before opening: closing a second descriptor would drop our lock
        raise UserError(busy_message)
    fd = _open_lock_file(path)
    try:
        key = _check_lock_file(fd, path)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                raise UserError(busy_message) from None
            raise
    except BaseException:
        os.close(fd)
        raise
    _HELD_LOCKS.add(key)
    try:
        with disk_errors(path):
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())  # who holds it, for a curious user; the lock is what counts
        yield
    finally:
        _HELD_LOCKS.discard(key)
        os.close(fd)  # releases the lock


def _lock_key(path: Path) -> tuple[int, int] | None:
    try:
        info = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _open_lock_file(path: Path) -> int:
    with disk_errors(path):
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UserError(f"{path}: is a symbolic link, not hgpose's lock file; remove the link "
                                "(hgpose never writes through it)") from None
            if exc.errno in (errno.EISDIR, errno.ENXIO, errno.EACCES, errno.EPERM):
                raise UserError(f"{path}: cannot be opened as hgpose's lock file ({exc.strerror})") from None
            raise


def _check_lock_file(fd: int, path: Path) -> tuple[int, int]:
    """The lock's (device, inode) when the open file can only be a lock of ours: a plain file with
    no other name, empty or holding a PID line. Raises UserError otherwise."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise UserError(f"{path}: not a regular file, so not hgpose's lock file; move it away")
    if info.st_nlink > 1:
        raise UserError(f"{path}: has {info.st_nlink} names (a hard link), so not hgpose's lock file; "
                        "remove it (hgpose never writes into it)")
    content = os.pread(fd, 64, 0) if info.st_size <= 32 else b"x"
    if content and not content.strip().isdigit():
        raise UserError(f"{path}: holds data that is not an hgpose lock (a PID); move it away "
                        "(hgpose never overwrites it)")
    return info.st_dev, info.st_ino


_SHA1_MEMO: dict[tuple, str] = {}


def file_sha1(path: str | Path) -> str:
    """A file's content hash (about 0.5 s for the 450 MB train2017 annotations), remembered per
    (path, size, mtime) so that a run reading the same file twice hashes it once."""
    path = Path(path)
    with disk_errors(path):
        info = path.stat()
        key = (str(path.resolve()), info.st_size, info.st_mtime_ns)
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
