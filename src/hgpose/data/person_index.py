"""The person index: the kept person instances of one annotation file as flat numpy arrays, one row
per person, and how a split is named after its annotation file."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from hgpose.data.transforms import CROP_PADDING, crop_box_from_bbox
from hgpose.keypoints import COCO_PERSON_ID

# Bump when the rules that decide which instances are kept change: caches are keyed on it.
INDEX_VERSION = 1


def split_name(annotation_file: str | Path) -> str:
    """person_keypoints_val2017.json -> val2017."""
    return Path(annotation_file).stem.removeprefix("person_keypoints_")


@dataclass
class PersonIndex:
    """Kept person instances of one annotation file (or a subset of them), one array row each."""

    annotation_file: Path
    image_dir: Path
    split: str
    rows: np.ndarray  # (N,) int64: row in the full file's kept-instance table (shares one cache)
    image_ids: np.ndarray  # (N,) int64
    ann_ids: np.ndarray  # (N,) int64
    image_index: np.ndarray  # (N,) int32 into file_names / image_sizes
    file_names: list[str]  # one per image holding kept instances, relative to image_dir
    image_sizes: np.ndarray  # (M, 2) int64 width, height
    bboxes: np.ndarray  # (N, 4) float32 COCO x, y, w, h clipped to the image
    keypoints: np.ndarray  # (N, 17, 3) float32 image x, y and COCO visibility v
    drops: dict[str, int] = field(default_factory=dict)  # reason -> instances dropped (whole file)
    ignored_keypoints: int = 0  # labelled keypoints outside their image, set to v=0
    category_id: int = COCO_PERSON_ID  # the file's person category id (results files use it)

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, positions) -> PersonIndex:
        """The instances at `positions` (indices or a boolean mask); image tables are shared."""
        positions = np.asarray(positions)
        if positions.dtype != bool:
            positions = positions.astype(np.int64)
        return replace(
            self,
            rows=self.rows[positions],
            image_ids=self.image_ids[positions],
            ann_ids=self.ann_ids[positions],
            image_index=self.image_index[positions],
            bboxes=self.bboxes[positions],
            keypoints=self.keypoints[positions],
        )

    def crop_boxes(self, padding: float = CROP_PADDING) -> np.ndarray:
        """(N, 3) square crop boxes (x0, y0, side) in image coordinates, float64."""
        return crop_box_from_bbox(self.bboxes.reshape(-1, 4), padding)

    def annotation_extents(self) -> np.ndarray:
        """(N, 2) the furthest x and y each person's box and labelled keypoints reach, image pixels:
        an image a pixel off its annotated size is still usable when these fit it."""
        bbox_end = self.bboxes[:, :2] + self.bboxes[:, 2:]
        labelled = self.keypoints[..., 2:3] > 0
        keypoint_end = np.where(labelled, self.keypoints[..., :2], 0).max(axis=1, initial=0)
        return np.maximum(bbox_end, keypoint_end).astype(np.float64)

    def image_path(self, position: int) -> Path:
        return self.image_dir / self.file_names[self.image_index[position]]

    def describe(self) -> str:
        """One line: kept instances and images, and dropped instances by reason."""
        images = len(np.unique(self.image_index))
        line = f"{self.split}: kept {len(self)} instances in {images} images"
        dropped = {reason: n for reason, n in self.drops.items() if n}
        if dropped:
            details = ", ".join(f"{reason} {n}" for reason, n in dropped.items())
            line += f"; dropped {sum(dropped.values())}: {details}"
        else:
            line += "; dropped none"
        if self.ignored_keypoints:
            line += f"; {self.ignored_keypoints} labelled keypoints outside their image ignored"
        return line
