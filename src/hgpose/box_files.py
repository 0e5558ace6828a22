"""Person box files for `hgpose predict --boxes`: a simple CSV file, a COCO annotation file, or a COCO
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

from hgpose.data.coco import is_safe_file_name
from hgpose.fileio import UserError, read_json

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
    or of a COCO detection results list (hgpose.detections: person boxes scoring >= min_box_score,
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
    categories = [c for c in data.get("categories", []) if isinstance(c, dict) and c.get("name") == "person"]
    category_id = categories[0].get("id", 1) if categories else 1
    table = BoxTable(path, category_id if isinstance(category_id, int) else 1)
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
    from hgpose.detections import read_detections

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
    """--boxes: a .csv box file (hgpose.box_files) by its suffix, else a COCO annotation or detection file."""
    if Path(path).suffix.lower() != ".csv":
        return load_boxes_json(path, min_box_score, annotations)
    if annotations is not None:
        raise UserError(f"--annotations names the images of a detection results file, not of {path}")
    table = BoxTable(Path(path), 1, upright=True)  # a person wrote these boxes for the photo as shown
    for name, (image_id, boxes) in load_boxes_csv(path).items():
        table.by_name[name] = ImageBoxes(image_id, name, boxes, [f"box {i + 1}" for i in range(len(boxes))])
    return table
