"""COCO detection results files (person boxes from a detector) as person samples, and a stand-in
detector for the demo.

A detection results file is a JSON list of {"image_id", "category_id", "bbox": [x, y, w, h],
"score"}, as COCO_val2017_detections_AP_H_56_person.json. Person detections (category 1) with a
score >= min_score are kept; the others, and boxes that are not usable, are counted by reason.
Each kept box becomes a sample cropped exactly as a ground-truth box is (the bbox clipped to its
image, then transforms.crop_box_from_bbox, read by the dataset's reader).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hgpose.keypoints import NUM_KEYPOINTS
from hgpose.runtime.files import UserError, atomic_write_json, read_json

PERSON_CATEGORY_ID = 1
SKIP_REASONS = ("not person", "below --min-box-score", "bad bbox", "unknown image id", "unusable image")
# how the printed summary words each reason (the JSON keeps the keys above)
SKIP_WORDS = {"not person": "not a person", "below --min-box-score": "below --min-box-score",
              "bad bbox": "degenerate or outside its image", "unreadable image": "on an unreadable image"}


@dataclass
class Detections:
    """Kept person boxes of a detection file, one row each, in file order."""

    source: Path
    image_ids: np.ndarray  # (N,) int64
    bboxes: np.ndarray  # (N, 4) float64 x, y, w, h as in the file
    scores: np.ndarray  # (N,) float64
    min_score: float
    total: int  # entries in the file
    skipped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.scores)

    def label(self) -> str:
        return f"detected boxes: {self.source}"

    def describe(self) -> str:
        skipped = describe_skipped(self.skipped)
        return (f"{self.source}: {len(self)} of {self.total} boxes kept (min score {self.min_score:g}); "
                f"skipped: {skipped}")


def describe_skipped(skipped: dict[str, int]) -> str:
    """'not a person 3, below --min-box-score 10' (or 'none'): dropped boxes by reason, in words."""
    return ", ".join(f"{SKIP_WORDS.get(reason, reason)} {n}" for reason, n in skipped.items() if n) or "none"


def read_detections(path, min_score: float = 0.0, category_id: int = PERSON_CATEGORY_ID,
                    annotation_file=None) -> Detections:
    """Parse a COCO detection results file; one-line UserError when it is not one, or when none of its
    boxes has `category_id` (the person id of `annotation_file`, the dataset they are scored on)."""
    path = Path(path)
    data = read_json(path, "detection results file")
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a COCO detection results list of "
                        "{image_id, category_id, bbox, score}, got a JSON object")
    try:
        image_ids = np.array([d["image_id"] for d in data], dtype=np.int64)
        categories = np.array([d.get("category_id", category_id) for d in data], dtype=np.int64)
        scores = np.array([d["score"] for d in data], dtype=np.float64)
        bboxes = np.array([d["bbox"] for d in data], dtype=np.float64).reshape(len(data), 4)
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
        raise UserError(f"{path}: {_first_problem(data)}") from None
    check_person_category(path, categories, category_id, annotation_file)
    skipped = dict.fromkeys(SKIP_REASONS, 0)
    reason = np.zeros(len(data), dtype=np.int8)

    def skip(name: str, mask: np.ndarray) -> None:
        reason[(reason == 0) & mask] = SKIP_REASONS.index(name) + 1

    skip("not person", categories != category_id)
    with np.errstate(invalid="ignore"):
        skip("below --min-box-score", ~(scores >= min_score))
        skip("bad bbox", ~np.isfinite(bboxes).all(axis=1) | ~(bboxes[:, 2] > 0) | ~(bboxes[:, 3] > 0))
    counts = np.bincount(reason, minlength=len(SKIP_REASONS) + 1)
    skipped.update({name: int(counts[i + 1]) for i, name in enumerate(SKIP_REASONS)})
    keep = reason == 0
    return Detections(path, image_ids[keep], bboxes[keep], scores[keep], float(min_score), len(data), skipped)


def check_person_category(path: Path, categories: np.ndarray, person_id: int, annotation_file=None) -> None:
    """Boxes none of which has the dataset's person category id are a UserError naming both ids: the
    file was written for a dataset that numbers its categories otherwise (COCO's person is 1), and
    scoring it would either keep no box (AP "-") or take another category's boxes for people."""
    if not len(categories) or (categories == person_id).any():
        return
    found = ", ".join(str(int(c)) for c in np.unique(categories)[:5]) + (", ..." if len(np.unique(categories)) > 5
                                                                       else "")
    where = f"{annotation_file} names person {person_id}" if annotation_file else f"person is {person_id}"
    raise UserError(f"{path}: none of its {len(categories)} boxes has the dataset's person category_id "
                    f"({where}); its boxes have category_id {found}. Write the person boxes with "
                    f"category_id {person_id}")


def _first_problem(data: list) -> str:
    for i, d in enumerate(data):
        if not isinstance(d, dict):
            return f"detection #{i} is not an object"
        for key in ("image_id", "bbox", "score"):
            if key not in d:
                return f"detection #{i} has no '{key}'"
        bbox = d["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            return f"detection #{i}: 'bbox' is not a list of 4 numbers"
        if not isinstance(d["image_id"], int) or isinstance(d["image_id"], bool):
            return f"detection #{i}: 'image_id' is not an integer"
        if not isinstance(d["score"], (int, float)):
            return f"detection #{i}: 'score' is not a number"
    return "unreadable detection entries"


def detection_index(detections: Detections, annotation_file, image_dir, split: str):
    """A PersonIndex whose instances are the detected boxes (no keypoints: v = 0), so that
    PersonDataset crops them exactly as ground-truth boxes. Boxes on images the annotation file does
    not list, or whose image entry is unusable, or that lie outside their image, are skipped and
    counted in detections.skipped. Row i of the index is detection `positions[i]`.

    Returns (index, positions, every image id of the annotation file)."""
    from hgpose.data.coco import is_safe_file_name, read_annotation_json
    from hgpose.data.images import MAX_IMAGE_PIXELS
    from hgpose.data.person_index import PersonIndex

    annotation_file = Path(annotation_file)
    data = read_annotation_json(annotation_file)
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise UserError(f"{annotation_file}: wrong schema: no 'images' list")
    try:
        ids = np.array([im["id"] for im in images], dtype=np.int64)
        sizes = np.array([[im["width"], im["height"]] for im in images], dtype=np.float64).reshape(-1, 2)
        names = [str(im["file_name"]) for im in images]
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{annotation_file}: wrong schema: an image entry lacks id, file_name, width or "
                        "height") from None
    usable = np.array([is_safe_file_name(n) for n in names], dtype=bool) & (sizes > 0).all(axis=1) \
        & (sizes.prod(axis=1) <= MAX_IMAGE_PIXELS)
    order = np.argsort(ids, kind="stable")
    at = np.searchsorted(ids[order], detections.image_ids)
    found = at < len(ids)
    found[found] = ids[order][at[found]] == detections.image_ids[found]
    image_pos = np.where(found, order[np.minimum(at, len(ids) - 1)] if len(ids) else 0, -1)
    known = image_pos >= 0
    good_image = known & usable[np.maximum(image_pos, 0)] if len(ids) else known
    width, height = (sizes[np.maximum(image_pos, 0)].T if len(ids) else (np.zeros(0), np.zeros(0)))
    x, y, w, h = detections.bboxes.T
    x0, y0 = np.clip(x, 0, width), np.clip(y, 0, height)
    x1, y1 = np.clip(x + w, 0, width), np.clip(y + h, 0, height)
    inside = (x1 > x0) & (y1 > y0)
    detections.skipped["unknown image id"] += int((~known).sum())
    detections.skipped["unusable image"] += int((known & ~good_image).sum())
    detections.skipped["bad bbox"] += int((good_image & ~inside).sum())
    keep = good_image & inside
    positions = np.flatnonzero(keep)
    used, image_index = np.unique(image_pos[keep], return_inverse=True)
    n = len(positions)
    index = PersonIndex(
        annotation_file=annotation_file,
        image_dir=Path(image_dir),
        split=split,
        rows=np.arange(n, dtype=np.int64),
        image_ids=detections.image_ids[keep],
        ann_ids=positions.astype(np.int64),
        image_index=image_index.astype(np.int32).reshape(-1),
        file_names=[names[i] for i in used],
        image_sizes=sizes[used].astype(np.int64).reshape(-1, 2),
        bboxes=np.stack([x0, y0, x1 - x0, y1 - y0], axis=1)[keep].astype(np.float32).reshape(-1, 4),
        keypoints=np.zeros((n, NUM_KEYPOINTS, 3), dtype=np.float32),
        drops={},
    )
    return index, positions, ids


# --- a stand-in detector for the demo -------------------------------------------------------------------


def write_jittered_detections(annotation_file, out, seed: int = 0, jitter: float = 0.08, miss_rate: float = 0.05,
                              duplicate_rate: float = 0.3, false_positives: float = 1.5) -> Path:
    """Write a detection results file made from the ground truth, NOT from a detector: every
    non-crowd person box with its centre and size jittered (sd `jitter` x the box side), a share
    `miss_rate` of people left out, a jittered second box for a share `duplicate_rate` (which
    OKS-NMS has to remove), and on average `false_positives` random boxes per image with low scores.
    True boxes score 0.5-1, duplicates 0.3-0.9, false positives 0.05-0.5. Deterministic for a seed."""
    data = read_json(annotation_file, "annotation file")
    rng = np.random.default_rng(seed)
    images = {im["id"]: im for im in data["images"]}
    people = [a for a in data["annotations"] if a.get("category_id") == PERSON_CATEGORY_ID
              and not a.get("iscrowd", 0) and a.get("image_id") in images]
    results = []

    def jittered(bbox, spread):
        x, y, w, h = (float(v) for v in bbox)
        cx, cy = x + w / 2 + rng.normal(0, spread * w), y + h / 2 + rng.normal(0, spread * h)
        w, h = w * np.exp(rng.normal(0, spread)), h * np.exp(rng.normal(0, spread))
        return [round(cx - w / 2, 2), round(cy - h / 2, 2), round(w, 2), round(h, 2)]

    for ann in people:
        if rng.random() < miss_rate or min(ann["bbox"][2:]) <= 1:
            continue
        results.append({"image_id": ann["image_id"], "category_id": 1, "bbox": jittered(ann["bbox"], jitter),
                        "score": round(float(rng.uniform(0.5, 1.0)), 4)})
        if rng.random() < duplicate_rate:
            score = round(float(rng.uniform(0.3, 0.9)), 4)
            results.append({"image_id": ann["image_id"], "category_id": 1,
                            "bbox": jittered(ann["bbox"], jitter * 1.5), "score": score})
    for image_id, image in images.items():
        for _ in range(rng.poisson(false_positives)):
            w = rng.uniform(0.1, 0.5) * image["width"]
            h = rng.uniform(0.2, 0.8) * image["height"]
            x, y = rng.uniform(0, image["width"] - w), rng.uniform(0, image["height"] - h)
            results.append({"image_id": image_id, "category_id": 1, "bbox": [round(v, 2) for v in (x, y, w, h)],
                            "score": round(float(rng.uniform(0.05, 0.5)), 4)})
    return atomic_write_json(out, results, indent=None)


def demo_detections(data_root, split: str = "val2017") -> Path:
    """The demo's detection file, data_root/annotations/detections_<split>_jittered.json, written from
    the ground truth by write_jittered_detections when absent (a stand-in for a person detector)."""
    from hgpose.data.coco import annotation_path

    out = Path(data_root) / "annotations" / f"detections_{split}_jittered.json"
    if not out.is_file():
        write_jittered_detections(annotation_path(data_root, split), out)
    return out
