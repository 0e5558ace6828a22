"""One sample = one person: a square crop of its image and its keypoints in heatmap coordinates.

Crops come from a prepared cache (hgpose.data.cache) when one is current, else from the image file
through hgpose.data.images.crop_file (stored pixels: COCO annotations refer to them, not to the
EXIF-rotated view). A sample whose image cannot be read (missing, corrupt, truncated, not the size
its annotation says, anything OpenCV raises on) comes back with valid=False, a zero image and zero
visibility, so one bad file never stops a run, not even inside a DataLoader worker; the loops count
and report them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from hgpose.data.cache import check_cache, check_cache_at, open_cache
from hgpose.data.images import crop_file
from hgpose.data.person_index import PersonIndex
from hgpose.data.transforms import image_to_frame, inside_frame
from hgpose.geometry import HEATMAP_STRIDE


class PersonDataset(Dataset):
    """Person crops of a PersonIndex as dicts of tensors (see __getitem__)."""

    def __init__(self, index: PersonIndex, input_size: int = 256, cache="auto", cache_dir=None):
        self.index = index
        self.input_size = int(input_size)
        self.heatmap_size = self.input_size // HEATMAP_STRIDE
        self.boxes = index.crop_boxes()
        points = image_to_frame(index.keypoints[..., :2], self.boxes, self.heatmap_size)
        self.keypoints = points.astype(np.float32).reshape(-1, index.keypoints.shape[1], 2)
        visibility = index.keypoints[..., 2].astype(np.int64)
        visibility[~inside_frame(points, self.heatmap_size)] = 0  # off the heatmap: no target
        self.visibility = visibility
        self.extents = index.annotation_extents()
        self.cache_path = _resolve_cache(index, self.input_size, cache, cache_dir)
        self.using_cache = self.cache_path is not None
        self._cache = None  # opened lazily, once per process (a file descriptor does not travel to workers)

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cache"] = None
        return state

    def __getitem__(self, i: int) -> dict:
        """image uint8 (3, S, S) RGB; keypoints float32 (17, 2) heatmap pixel-centre coordinates;
        visibility int64 (17,) COCO flags, 0 off the heatmap; index int64; valid bool."""
        if self.using_cache:
            cache = self._open_cache()
            row = self.index.rows[i]
            image = cache.read_rows([row])[0]  # one positioned read: (3, S, S) RGB already
            valid = bool(cache.valid[row])
        else:
            # stored pixels (COCO annotations refer to them, not to the EXIF-rotated view)
            result = crop_file(self.index.image_path(i), self.boxes[i : i + 1], self.input_size,
                               self.index.image_sizes[self.index.image_index[i]], extent=self.extents[i])
            valid = result.problem is None
            image = result.crops[0] if valid else np.zeros((3, self.input_size, self.input_size), np.uint8)
        visibility = self.visibility[i].copy() if valid else np.zeros_like(self.visibility[i])
        return {
            "image": torch.from_numpy(image),
            "keypoints": torch.from_numpy(self.keypoints[i].copy()),
            "visibility": torch.from_numpy(visibility),
            "index": torch.tensor(i, dtype=torch.int64),
            "valid": torch.tensor(valid),
        }

    def _open_cache(self):
        if self._cache is None:
            self._cache = open_cache(self.cache_path)
        return self._cache


_WARNED: set = set()


def _resolve_cache(index: PersonIndex, input_size: int, cache, cache_dir) -> Path | None:
    """The prepared cache this dataset reads, or None for the raw-JPEG path."""
    if cache is None or (isinstance(cache, str) and cache == "off"):
        return None
    if isinstance(cache, str) and cache == "auto":
        status = check_cache(index.annotation_file, index.image_dir, input_size, cache_dir)
        if status.state == "stale" and (status.path, status.reason) not in _WARNED:
            _WARNED.add((status.path, status.reason))  # once per process, not once per dataset
            print(
                f"cache for {index.split} is stale ({status.reason}); reading JPEGs instead. "
                f"Run `hgpose prepare` to rebuild {status.path}",
                file=sys.stderr,
            )
        status = status if status.state == "current" else None
    else:
        status = check_cache_at(Path(cache), index.annotation_file, input_size, require=True)
    if status is None:
        return None
    status.verify_rows(index)
    return status.path

