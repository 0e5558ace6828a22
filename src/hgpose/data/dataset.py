"""One sample = one person: a square crop of its image and its keypoints in heatmap coordinates.

Crops come from a prepared cache (hgpose.data.cache) when one is current, else from the JPEG.
A sample whose image cannot be read (missing, corrupt, truncated, not the size its annotation
says) comes back with valid=False, a zero image and zero visibility, so one bad file never stops
a run, not even inside a DataLoader worker; the loops count and report them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from hgpose.data.coco import MAX_IMAGE_PIXELS, PersonIndex
from hgpose.data.transforms import crop_image, image_to_frame, inside_frame

# IGNORE_ORIENTATION: COCO annotations refer to the stored pixels, not the EXIF-rotated view.
_DECODE_FLAGS = {
    1: cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION,
    2: cv2.IMREAD_REDUCED_COLOR_2 | cv2.IMREAD_IGNORE_ORIENTATION,
    4: cv2.IMREAD_REDUCED_COLOR_4 | cv2.IMREAD_IGNORE_ORIENTATION,
    8: cv2.IMREAD_REDUCED_COLOR_8 | cv2.IMREAD_IGNORE_ORIENTATION,
}


class PersonDataset(Dataset):
    """Person crops of a PersonIndex as dicts of tensors (see __getitem__)."""

    def __init__(self, index: PersonIndex, input_size: int = 256, cache="auto", cache_dir=None):
        self.index = index
        self.input_size = int(input_size)
        self.heatmap_size = self.input_size // 4
        self.boxes = index.crop_boxes()
        points = image_to_frame(index.keypoints[..., :2], self.boxes, self.heatmap_size)
        self.keypoints = points.astype(np.float32).reshape(-1, index.keypoints.shape[1], 2)
        visibility = index.keypoints[..., 2].astype(np.int64)
        visibility[~inside_frame(points, self.heatmap_size)] = 0  # off the heatmap: no target
        self.visibility = visibility
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
            crop, problem = read_crops(
                self.index.image_path(i), self.boxes[i : i + 1], self.input_size,
                self.index.image_sizes[self.index.image_index[i]],
            )
            valid = problem is None
            image = crop[0] if valid else np.zeros((3, self.input_size, self.input_size), np.uint8)
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
            from hgpose.data.cache import open_cache

            self._cache = open_cache(self.cache_path)
        return self._cache


_WARNED: set = set()


def _resolve_cache(index: PersonIndex, input_size: int, cache, cache_dir) -> Path | None:
    """The prepared cache this dataset reads, or None for the raw-JPEG path."""
    from hgpose.data.cache import check_cache, check_cache_at

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


# --- reading crops from image files -----------------------------------------------------------------


def read_crops(path: Path, boxes: np.ndarray, input_size: int, expected_size) -> tuple[list | None, str | None]:
    """Crops (3, S, S) uint8 RGB of `boxes` (k, 3) from one image file, decoding it as few times as
    the reduction factors need; (None, problem) when the file cannot be used."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, "missing file"
    except OSError as exc:
        return None, f"unreadable ({exc.strerror or exc})"
    problem = _check_header(data, expected_size)
    if problem:
        return None, problem
    width, height = int(expected_size[0]), int(expected_size[1])
    is_jpeg = data[:2] == b"\xff\xd8"
    factors = [_reduction(side, input_size) if is_jpeg else 1 for side in boxes[:, 2]]
    decoded = {}
    crops = []
    for box, factor in zip(boxes, factors):
        if factor not in decoded:
            image = cv2.imdecode(np.frombuffer(data, np.uint8), _DECODE_FLAGS[factor])
            expected = (-(-height // factor), -(-width // factor))
            if image is None:
                return None, "corrupt image"
            if image.shape[:2] != expected:  # formats without a parsed header land here
                found = f"{image.shape[1] * factor}x{image.shape[0] * factor}"
                return None, f"image is about {found}, annotation says {width}x{height}"
            decoded[factor] = image
        crop = crop_image(decoded[factor], np.asarray(box, np.float64) / factor, input_size)
        crops.append(np.ascontiguousarray(crop.transpose(2, 0, 1)[::-1]))  # HWC BGR -> CHW RGB
    return crops, None


def _reduction(side: float, input_size: int) -> int:
    """The JPEG decode reduction for a crop of `side` image pixels.

    The crop is downscaled to input_size anyway, so when side >= 2 x input_size libjpeg can decode
    at 1/2, 1/4 or 1/8 scale (its DCT scaling averages, so this is no worse than full-size decoding
    followed by the bilinear warp, which would alias) and the box is scaled with it: reduced pixel i
    covers image pixels f*i .. f*i + f, so image coordinate x is x / f there. Several times faster.
    """
    for factor in (8, 4, 2):
        if side >= factor * input_size:
            return factor
    return 1


def _check_header(data: bytes, expected_size) -> str | None:
    """Refuse a file before decoding when its header says it is truncated, huge or the wrong size."""
    size = image_header_size(data)
    if data[:2] == b"\xff\xd8":
        if size is None:
            return "corrupt JPEG (no frame header)"
        # entropy-coded data never holds FF D9, so a file cut short has no end-of-image marker
        if b"\xff\xd9" not in data[-4096:]:
            return "truncated JPEG (no end-of-image marker)"
    if size is None:
        return None if data else "empty file"
    width, height = size
    if width * height > MAX_IMAGE_PIXELS:
        return f"image too large ({width}x{height})"
    if (width, height) != (int(expected_size[0]), int(expected_size[1])):
        return f"image is {width}x{height}, annotation says {int(expected_size[0])}x{int(expected_size[1])}"
    return None


_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def image_header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG frame header or PNG IHDR without decoding; None if not found."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _SOF_MARKERS:
            return int.from_bytes(data[i + 7 : i + 9], "big"), int.from_bytes(data[i + 5 : i + 7], "big")
        if marker == 0xD8 or 0xD0 <= marker <= 0xD7 or marker == 0x01:
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            return None
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None
