"""The annotation index, prepared once: later starts load a PersonIndex's arrays from an .npz.

Parsing train2017's 450 MB JSON takes seconds at every `train` or `evaluate` start, yet its
PersonIndex is a few flat arrays (tens of MB). After the first parse they are saved, atomically and
without pickle, to <root>/hgpose_cache/index_<split>.npz beside the crop caches, keyed by the
annotation file: its size and mtime (checked first, free) or, when only those changed, its sha1
(the crop cache's fingerprint). A different file, hgpose index rules or image-size limit means a
fresh parse that replaces the cache. Files under MIN_BYTES are simply parsed (faster than any cache),
and a folder that cannot be written just means no index cache.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from hgpose.data.images import MAX_IMAGE_PIXELS
from hgpose.data.person_index import INDEX_VERSION, PersonIndex, split_name
from hgpose.runtime.files import atomic_path, file_sha1

MIN_BYTES = 8 << 20
INDEX_CACHE_VERSION = 1
_ARRAYS = ("rows", "image_ids", "ann_ids", "image_index", "image_sizes", "bboxes", "keypoints")


def index_cache_path(annotation_file, image_dir) -> Path:
    return Path(image_dir).parent / "hgpose_cache" / f"index_{split_name(annotation_file)}.npz"


def load_index(annotation_file, image_dir, split: str, parse) -> PersonIndex:
    """The file's PersonIndex from the index cache when it matches the file, else parse() (saved)."""
    annotation_file, image_dir = Path(annotation_file), Path(image_dir)
    stat = annotation_file.stat()
    if stat.st_size < MIN_BYTES:
        return parse()
    path = index_cache_path(annotation_file, image_dir)
    index = read_index(path, annotation_file, image_dir, split)
    if index is None:
        index = parse()
        try:
            write_index(path, index)
        except OSError:
            pass  # a read-only data folder: parse every time, as without the cache
    return index


def _key(annotation_file: Path, with_sha1: bool) -> dict:

    stat = annotation_file.stat()
    return {
        "cache_version": INDEX_CACHE_VERSION,
        "index_version": INDEX_VERSION,
        "max_image_pixels": MAX_IMAGE_PIXELS,
        "source_bytes": stat.st_size,
        "source_mtime_ns": stat.st_mtime_ns,
        "source_sha1": file_sha1(annotation_file) if with_sha1 else "",
    }


def write_index(path: Path, index: PersonIndex) -> Path:
    key = _key(Path(index.annotation_file), with_sha1=True)
    arrays = {name: getattr(index, name) for name in _ARRAYS}
    arrays["file_names"] = np.array(index.file_names, dtype=str)
    arrays["drop_reasons"] = np.array(list(index.drops), dtype=str)
    arrays["drop_counts"] = np.array(list(index.drops.values()), dtype=np.int64)
    arrays["ignored_keypoints"] = np.int64(index.ignored_keypoints)
    arrays["category_id"] = np.int64(index.category_id)
    arrays["source_sha1"] = np.array(key.pop("source_sha1"))
    arrays.update({name: np.int64(value) for name, value in key.items()})
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return Path(path)


def read_index(path: Path, annotation_file: Path, image_dir: Path, split: str) -> PersonIndex | None:
    """The cached index when it is one of this very file, else None."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            found = {name: stored[name] for name in stored.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        return None
    key = _key(annotation_file, with_sha1=False)
    try:
        same = all(int(found[name]) == value for name, value in key.items() if name != "source_sha1")
        if not same:  # same bytes under a new mtime (a copy, a touch) still match by content
            rest = {n: v for n, v in key.items() if n not in ("source_mtime_ns", "source_sha1")}
            same = all(int(found[n]) == v for n, v in rest.items()) \
                and str(found["source_sha1"]) == _key(annotation_file, with_sha1=True)["source_sha1"]
        if not same:
            return None
        return PersonIndex(
            annotation_file=annotation_file,
            image_dir=image_dir,
            split=split,
            **{name: found[name] for name in _ARRAYS},
            file_names=found["file_names"].tolist(),
            drops={str(r): int(c) for r, c in zip(found["drop_reasons"], found["drop_counts"])},
            ignored_keypoints=int(found["ignored_keypoints"]),
            category_id=int(found["category_id"]),
        )
    except (KeyError, ValueError, TypeError):
        return None
