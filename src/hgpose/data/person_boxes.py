"""Person box files, read in one place: COCO detection results (person boxes from a detector) as
person samples, the files `hgpose predict --boxes` takes, user-given boxes, and a stand-in detector
for the demo.

A detection results file is a JSON list of {"image_id", "category_id", "bbox": [x, y, w, h],
"score"}, as COCO_val2017_detections_AP_H_56_person.json. Person detections (category 1) with a
score >= min_score are kept; the others, and boxes that are not usable, are counted by reason.
Each kept box becomes a sample cropped exactly as a ground-truth box is (the bbox clipped to its
image, then transforms.crop_box_from_bbox, read by the dataset's reader).

Person box files for `hgpose predict --boxes`: a simple CSV file, a COCO annotation file, or a COCO
detection results list (named through the dataset's annotation file with --annotations), read into
one BoxTable that says which file each entry is for.

A CSV file has one row per person: file_name,x,y,w,h[,score] (x, y the top-left corner, w, h the size, in pixels of
the photo as every viewer shows it, i.e. turned upright by its EXIF orientation: a person wrote these
boxes looking at it; COCO files, by contrast, refer to the stored pixels). file_name is a base name or
a path relative to the image root (seqA/000000.jpg); one that would match several given files is an
error (hgpose.predict). An optional header row names the columns; a detector's score column is
accepted and not used. Rows of one image may be anywhere in the file; images are numbered 1, 2, ...
in the order they first appear (the image_id of the results).
"""

from __future__ import annotations

import csv
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hgpose.data.coco import annotation_path, is_safe_file_name, read_annotation_json
from hgpose.data.images import MAX_IMAGE_PIXELS
from hgpose.data.person_index import PersonIndex
from hgpose.keypoints import COCO_PERSON_ID, NUM_KEYPOINTS, person_category_id
from hgpose.runtime.files import UserError, atomic_write_json, read_json

PERSON_CATEGORY_ID = COCO_PERSON_ID  # a detection file names no categories: COCO's person id
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
    out = Path(data_root) / "annotations" / f"detections_{split}_jittered.json"
    if not out.is_file():
        write_jittered_detections(annotation_path(data_root, split), out)
    return out


# --- the files `hgpose predict --boxes` takes -------------------------------------------------------


COLUMNS = ("file_name", "x", "y", "w", "h", "score")


def load_boxes_csv(path) -> dict[str, tuple[int, np.ndarray]]:
    """file name -> (image id, (P, 4) boxes x, y, w, h); UserError naming the file and line for a
    malformed row. Boxes without a positive finite size are skipped and counted on stderr."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"{path}: boxes file not found") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a CSV text file (not UTF-8)") from None
    except OSError as exc:
        raise UserError(f"{path}: unreadable ({exc.strerror or exc})") from None
    boxes: dict[str, list[list[float]]] = {}
    degenerate, first_row = [], True
    for line, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        cells = [cell.strip() for cell in row]
        header, first_row = first_row and cells[0].lower() == COLUMNS[0], False
        if header:
            continue
        if len(cells) not in (5, 6) or not cells[0]:
            raise UserError(f"{path}: line {line}: expected {','.join(COLUMNS[:5])}[,score], got {','.join(row)!r}")
        try:
            x, y, w, h = (float(v) for v in cells[1:5])
            if len(cells) == 6:
                float(cells[5])
        except ValueError:
            raise UserError(f"{path}: line {line}: not a number in {','.join(row)!r}") from None
        if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
            degenerate.append(line)
            continue
        boxes.setdefault(cells[0], []).append([x, y, w, h])
    if degenerate:
        lines = ", ".join(map(str, degenerate[:5])) + (" ..." if len(degenerate) > 5 else "")
        print(f"{path}: skipped {len(degenerate)} box(es) without a positive finite size (line {lines})",
              file=sys.stderr)
    if not boxes:
        raise UserError(f"{path}: no boxes (expected rows of {','.join(COLUMNS[:5])}[,score])")
    return {name: (number, np.asarray(rows, np.float64)) for number, (name, rows) in enumerate(boxes.items(), 1)}


# --- every kind of box file as one table -------------------------------------------------------------


@dataclass
class ImageBoxes:
    """One image's people in a --boxes file."""

    image_id: int
    file_name: str  # as written in the file ("" for a detection results list without --annotations)
    boxes: np.ndarray  # (P, 4) x, y, w, h as given, degenerate ones included
    labels: list[str]  # (P,) "annotation 17" / "detection 3": how to name a person in a report
    scores: np.ndarray | None = None  # (P,) detector scores (a detection results file), else None
    size: tuple[int, int] | None = None  # (width, height) the file says the image has, when it says
    extent: np.ndarray | None = None  # the furthest x, y its boxes and labelled keypoints reach


@dataclass
class Unlisted:
    """A given image the --boxes file has no entry for, and why, in the user's terms."""

    reason: str


@dataclass
class BoxTable:
    """The people of a --boxes file: a COCO annotation file or a CSV box file (matched by file_name
    under the image root), or a COCO detection results list (matched by numeric file stems, or by
    file name through the dataset's annotation file)."""

    source: Path
    category_id: int  # the file's person category id, used in the results
    by_name: dict[str, ImageBoxes] = field(default_factory=dict)  # file_name as written -> its people
    by_id: dict[int, ImageBoxes] = field(default_factory=dict)  # detection results: image id -> people
    upright: bool = False  # boxes refer to the upright photo (a CSV a person wrote), not stored pixels
    dropped: dict[int, int] = field(default_factory=dict)  # detection results: image id -> boxes not kept
    _by_base: dict | None = field(default=None, repr=False)

    def under_root(self, root: Path) -> list[tuple[Path, ImageBoxes]]:
        """The listed images found under `root` (the folder the file's names are relative to)."""
        found = []
        for name, entry in self.by_name.items():
            path = root / name
            if is_safe_file_name(name) and path.is_file():
                found.append((path, entry))
        return found

    def _bases(self) -> dict[str, list[ImageBoxes]]:
        if self._by_base is None:  # base name -> entries, built once: many files may be matched
            self._by_base = {}
            for name, entry in self.by_name.items():
                self._by_base.setdefault(Path(name).name, []).append(entry)
        return self._by_base

    def match(self, path: Path) -> ImageBoxes | Unlisted:
        """The entry whose file_name is the tail of `path` (path parts, not just the base name), or
        why there is none; UserError when several are."""
        if not self.by_name:
            return self._match_id(path)
        parts = path.absolute().parts  # "000000.jpg" run inside seqA/ is seqA/000000.jpg
        same_base = self._bases().get(path.name, [])
        hits = [entry for entry in same_base
                if parts[len(parts) - len(Path(entry.file_name).parts):] == Path(entry.file_name).parts]
        if len(hits) > 1:
            names = ", ".join(repr(e.file_name) for e in hits[:4])
            raise UserError(f"{path}: matches several images of {self.source} ({names}); give the folder its "
                            "file names are relative to instead")
        if hits:
            return hits[0]
        if same_base:  # listed under a longer path than the one given: say so, it is not "not listed"
            names = ", ".join(repr(e.file_name) for e in same_base[:3])
            return Unlisted(f"its name is listed in {self.source} only as {names}, a path this file's does not "
                            "end with; give the folder those file names are relative to")
        return Unlisted(f"not listed in {self.source}")

    def _match_id(self, path: Path) -> ImageBoxes | Unlisted:
        if not path.stem.isdigit():
            return Unlisted(f"{self.source} names images by id only and this file name is not a number; "
                            "give the dataset's annotation file with --annotations to match by file name")
        image_id = int(path.stem)
        if image_id in self.by_id:
            return self.by_id[image_id]
        if image_id in self.dropped:
            return Unlisted(f"none of the {self.dropped[image_id]} box(es) of image id {image_id} in {self.source} "
                            "is a usable person box (not person, below --min-box-score or a bad bbox)")
        return Unlisted(f"image id {image_id} has no box in {self.source}")


def load_boxes_json(path, min_box_score: float = 0.0, annotations=None) -> BoxTable:
    """The person boxes of a COCO-format annotation file (its images and non-crowd person annotations)
    or of a COCO detection results list (hgpose.data.person_boxes: person boxes scoring >= min_box_score,
    their scores kept). annotations: the dataset's annotation file, for a detection results list:
    its images name the files the detections' image ids stand for (as evaluate --boxes reads them)."""
    path = Path(path)
    data = read_json(path, "boxes file")
    if isinstance(data, list):
        table = _detection_table(path, data, min_box_score)
        return _named_by(table, annotations) if annotations is not None else table
    if annotations is not None:
        raise UserError(f"--annotations names the images of a detection results file; {path} is an "
                        "annotation file itself")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise UserError(f"{path}: expected a COCO annotation file with 'images' and 'annotations'")
    table = BoxTable(path, person_category_id(data.get("categories", [])))
    people: dict[int, list] = {}
    for ann in data.get("annotations", []):
        if isinstance(ann, dict) and ann.get("category_id") == table.category_id \
                and not ann.get("iscrowd", 0) and "bbox" in ann:
            people.setdefault(ann.get("image_id"), []).append(ann)
    for im in data["images"]:
        entry = _image_entry(path, im, people)
        if entry.file_name in table.by_name:
            raise UserError(f"{path}: file_name {entry.file_name!r} is listed twice")
        table.by_name[entry.file_name] = entry
    return table


def _image_entry(path: Path, im, people: dict) -> ImageBoxes:
    """One image of a COCO annotation file with its people, its stated size and their extent."""
    try:
        anns = people.get(im["id"], [])
        entry = ImageBoxes(int(im["id"]), str(im["file_name"]), [a["bbox"] for a in anns],
                           [f"annotation {a.get('id', '?')}" for a in anns])
    except (KeyError, TypeError, ValueError, OverflowError):
        raise UserError(f"{path}: an image entry lacks a file_name or an integer id") from None
    try:
        entry.boxes = np.asarray(entry.boxes, np.float64).reshape(-1, 4)
    except (TypeError, ValueError):
        raise UserError(f"{path}: image id {entry.image_id} has a bbox that is not 4 numbers") from None
    width, height = im.get("width"), im.get("height")
    if all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (width, height)):
        entry.size = (width, height)  # checked against the file as train and evaluate check it
        entry.extent = _extent(entry.boxes, [a.get("keypoints") for a in anns])
    return entry


def _extent(boxes: np.ndarray, keypoints) -> np.ndarray:
    """The furthest x, y the boxes and labelled keypoints reach (PersonIndex.annotation_extents)."""
    with np.errstate(invalid="ignore"):
        ends = np.nan_to_num(boxes[:, :2] + boxes[:, 2:], nan=0.0, posinf=0.0, neginf=0.0)
    furthest = ends.max(axis=0, initial=0) if len(ends) else np.zeros(2)
    for points in keypoints:
        try:
            points = np.asarray(points, np.float64).reshape(-1, 3)
        except (TypeError, ValueError):
            continue
        labelled = points[np.isfinite(points).all(axis=1) & (points[:, 2] > 0), :2]
        if len(labelled):
            furthest = np.maximum(furthest, labelled.max(axis=0))
    return furthest


def _detection_table(path: Path, data: list, min_box_score: float) -> BoxTable:
    """A detection results list by image id; ids whose every box was dropped are remembered, so that
    their images are not said to be missing from the file."""
    detections = read_detections(path, min_box_score)
    table = BoxTable(path, 1)
    for image_id in np.unique(detections.image_ids):
        mine = detections.image_ids == image_id
        table.by_id[int(image_id)] = ImageBoxes(
            int(image_id), "", detections.bboxes[mine], [f"detection {k + 1}" for k in range(int(mine.sum()))],
            detections.scores[mine])
    for d in data:  # read_detections checked every entry's image_id
        if d["image_id"] not in table.by_id:
            table.dropped[d["image_id"]] = table.dropped.get(d["image_id"], 0) + 1
    return table


def _named_by(table: BoxTable, annotations) -> BoxTable:
    """The detection table keyed by the file names the annotation file gives its image ids, with the
    sizes it states: every image it lists (with no box where the detector found none)."""
    annotation_table = load_boxes_json(annotations)
    unknown = set(table.by_id) - {entry.image_id for entry in annotation_table.by_name.values()}
    if unknown:
        print(f"{table.source}: boxes of {len(unknown)} image id(s) that {annotations} does not list are not "
              f"used (e.g. {sorted(unknown)[0]})", file=sys.stderr)
    named = BoxTable(table.source, 1, dropped=table.dropped)
    for name, image in annotation_table.by_name.items():
        found = table.by_id.get(image.image_id)
        boxes = found.boxes if found is not None else np.zeros((0, 4))
        named.by_name[name] = ImageBoxes(
            image.image_id, name, boxes, found.labels if found is not None else [],
            found.scores if found is not None else np.zeros(0), image.size,
            _extent(boxes, []) if image.size is not None else None)
    return named


def load_boxes_file(path, min_box_score: float = 0.0, annotations=None) -> BoxTable:
    """--boxes: a .csv box file (load_boxes_csv) by its suffix, else a COCO annotation or detection file."""
    if Path(path).suffix.lower() != ".csv":
        return load_boxes_json(path, min_box_score, annotations)
    if annotations is not None:
        raise UserError(f"--annotations names the images of a detection results file, not of {path}")
    table = BoxTable(Path(path), 1, upright=True)  # a person wrote these boxes for the photo as shown
    for name, (image_id, boxes) in load_boxes_csv(path).items():
        table.by_name[name] = ImageBoxes(image_id, name, boxes, [f"box {i + 1}" for i in range(len(boxes))])
    return table


# --- boxes given in code or on the command line ------------------------------------------------------


def as_boxes(boxes, image_shape) -> np.ndarray:
    """(P, 4) float64 person boxes x, y, w, h; the whole image when boxes is None."""
    if boxes is None:
        height, width = image_shape[:2]
        return np.array([[0.0, 0.0, width, height]])
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.size == 0:
        return np.zeros((0, 4))
    boxes = boxes.reshape(-1, 4) if boxes.ndim == 1 and boxes.size == 4 else boxes
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise UserError(f"boxes: expected (P, 4) x, y, w, h, got shape {boxes.shape}")
    bad = bad_box_mask(boxes)
    if bad.any():
        raise UserError(f"boxes: box {int(np.flatnonzero(bad)[0]) + 1} (counting from 1) is {boxes[bad][0].tolist()}; "
                        "expected finite x, y and positive w, h")
    return boxes


def bad_box_mask(boxes: np.ndarray) -> np.ndarray:
    """(P,) True for a box that is not finite x, y with positive w, h."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    with np.errstate(invalid="ignore"):
        return ~np.isfinite(boxes).all(axis=1) | ~(boxes[:, 2] > 0) | ~(boxes[:, 3] > 0)
