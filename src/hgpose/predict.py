"""Inference on images: person boxes -> square crops -> heatmaps -> 17 keypoints in image pixels.

    predictor = hgpose.load("runs/train/best.safetensors")
    keypoints = predictor.predict("photo.jpg", boxes=[[x, y, w, h]])  # (P, 17, 3): x, y, confidence

Crops are made exactly as for training and evaluate (hgpose.data.images.crop_file: the box clipped
to the image, a square 1.25 x its longer side centred on it, a large person's JPEG decoded at reduced
size); with no boxes the whole image is one person. Keypoints come back in the image convention of
transforms.py (pixel i covers [i, i+1)), confidence = the heatmap's peak value. A photo file is
turned upright by its EXIF orientation, as viewers show it; with boxes from a COCO file the stored
pixels are used, as COCO's annotations refer to them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from hgpose.data import images
from hgpose.data.coco import is_safe_file_name
from hgpose.data.transforms import crop_box_from_bbox, crop_image, frame_to_image
from hgpose.model.heatmaps import check_decode_method, decode_heatmaps, flip_test
from hgpose.model.hourglass import HourglassNet, to_model_input
from hgpose.model.weights import load_model
from hgpose.runtime.files import UserError, atomic_write_bytes, atomic_write_json, read_json

__all__ = ["Predictor", "predict_paths", "read_image", "to_model_input", "PredictSummary"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
OVERLAY_SUFFIX = "_pose.jpg"


# --- images and boxes ---------------------------------------------------------------------------


def read_image(path, upright: bool = True) -> np.ndarray:
    """RGB uint8 (H, W, 3) from an image file, EXIF orientation applied when upright (as photo viewers
    show it); UserError naming the file when it cannot be read."""
    try:
        return images.read_image(path, upright=upright)
    except images.ImageProblem as exc:
        raise UserError(f"{path}: {exc}") from None


def as_rgb(image) -> np.ndarray:
    """A path or an array (H, W, 3) RGB, (H, W) grey or (H, W, 4) RGBA, uint8 -> (H, W, 3) uint8 RGB."""
    if isinstance(image, (str, Path)):
        return read_image(image)
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise UserError(f"image: expected uint8 pixels, got {array.dtype} (scale floats in [0, 1] by 255)")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4) or min(array.shape[:2]) < 1:
        raise UserError(f"image: expected an (H, W, 3) RGB array, got shape {array.shape}")
    return np.ascontiguousarray(array[:, :, :3])


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
        raise UserError(f"boxes: box {int(np.flatnonzero(bad)[0])} is {boxes[bad][0].tolist()}; "
                        "expected finite x, y and positive w, h")
    return boxes


def bad_box_mask(boxes: np.ndarray) -> np.ndarray:
    """(P,) True for a box that is not finite x, y with positive w, h."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    with np.errstate(invalid="ignore"):
        return ~np.isfinite(boxes).all(axis=1) | ~(boxes[:, 2] > 0) | ~(boxes[:, 3] > 0)


def person_crops(image, boxes, input_size: int, upright: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(crops (P, 3, S, S) uint8 RGB, crop boxes (P, 3)) of the people in `image`, made exactly as for
    training: boxes clipped to the image, a file decoded by hgpose.data.images.crop_file (a large
    person's JPEG at reduced size). boxes None: the whole image. upright: apply a file's EXIF orientation
    (boxes then refer to the upright view); arrays are taken as they are."""
    if isinstance(image, (str, Path)):
        bboxes = None if boxes is None else as_boxes(boxes, (1, 1))
        if bboxes is not None and not len(bboxes):
            return np.zeros((0, 3, input_size, input_size), np.uint8), np.zeros((0, 3))
        result = images.crop_file(image, bboxes=bboxes, input_size=input_size, upright=upright)
        if result.problem:
            raise UserError(f"{image}: {result.problem}")
        return np.stack(result.crops), result.boxes
    image = as_rgb(image)
    height, width = image.shape[:2]
    bboxes = as_boxes(boxes, image.shape)
    crop_boxes = crop_box_from_bbox(images.clip_bboxes(bboxes, (width, height)) if boxes is not None else bboxes)
    crops = [crop_image(image, box, input_size).transpose(2, 0, 1) for box in crop_boxes]
    return (np.stack(crops) if crops else np.zeros((0, 3, input_size, input_size), np.uint8)), crop_boxes


# --- the predictor --------------------------------------------------------------------------------


@dataclass
class Predictor:
    """A model ready for inference; `predict` for one image, `predict_many` to batch across images."""

    model: HourglassNet
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    batch_size: int = 32
    flip_test: bool = False  # average with the mirrored crop's heatmaps, as evaluate --flip-test
    decode: str = "quarter"  # a hgpose.model.heatmaps.decode_heatmaps method: "quarter" or "dark"

    @classmethod
    def from_checkpoint(cls, checkpoint, device="cpu", batch_size: int = 32, flip_test: bool = False,
                        decode: str = "quarter") -> Predictor:
        check_decode_method(decode)
        device = torch.device(device)
        return cls(load_model(checkpoint, device=device), device, batch_size, flip_test, decode)

    @property
    def input_size(self) -> int:
        return self.model.config.input_size

    @property
    def heatmap_size(self) -> int:
        return self.model.config.heatmap_size

    @torch.inference_mode()
    def predict_crops(self, crops) -> tuple[np.ndarray, np.ndarray]:
        """uint8 crops (N, 3, S, S) RGB -> coords (N, K, 2) in heatmap pixel-centre coordinates and
        confidence (N, K), in batches of batch_size."""
        crops = torch.as_tensor(np.asarray(crops))
        coords, confidence = [], []
        self.model.eval()
        for start in range(0, len(crops), self.batch_size):
            batch = to_model_input(crops[start : start + self.batch_size].to(self.device))
            heatmaps = flip_test(self.model, batch) if self.flip_test else self.model(batch)
            c, p = decode_heatmaps(heatmaps.float(), self.decode)
            coords.append(c.cpu())
            confidence.append(p.cpu())
        k = self.model.config.num_keypoints
        if not coords:
            return np.zeros((0, k, 2), np.float32), np.zeros((0, k), np.float32)
        return torch.cat(coords).numpy(), torch.cat(confidence).numpy()

    def predict(self, image, boxes=None, upright: bool = True) -> np.ndarray:
        """(P, 17, 3) x, y, confidence in image pixels, one row per box (one for the whole image
        when boxes is None). image: RGB uint8 array (H, W, 3) or a path; boxes: (P, 4) x, y, w, h,
        clipped to the image. A path is cropped as training crops; upright=True applies its EXIF
        orientation (boxes and keypoints then refer to the upright photo), False keeps stored pixels."""
        return next(self.predict_many([(image, boxes, None)], upright=upright))[1]

    def predict_many(self, items: Iterable[tuple], upright: bool = True) -> Iterator[tuple[object, np.ndarray]]:
        """For each (image, boxes, tag) yield (tag, (P, 17, 3) keypoints), in order; the crops of
        consecutive images share batches, so many one-person images run batch_size at a time."""
        return self.predict_crops_many(
            (*person_crops(image, boxes, self.input_size, upright), tag) for image, boxes, tag in items)

    def predict_crops_many(self, items: Iterable[tuple]) -> Iterator[tuple[object, np.ndarray]]:
        """predict_many for people already cropped: items (crops (P, 3, S, S), crop boxes (P, 3), tag)."""
        pending: list[tuple[object, np.ndarray]] = []  # (tag, crop boxes) not yet yielded
        crops: list[np.ndarray] = []
        for image_crops, crop_boxes, tag in items:
            crops += list(image_crops)
            pending.append((tag, crop_boxes))
            if len(crops) >= self.batch_size:
                yield from self._finish(pending, crops)
                pending, crops = [], []
        yield from self._finish(pending, crops)

    def _finish(self, pending, crops):
        stacked = np.stack(crops) if crops else np.zeros((0, 3, self.input_size, self.input_size), np.uint8)
        coords, confidence = self.predict_crops(stacked)
        start = 0
        for tag, crop_boxes in pending:
            end = start + len(crop_boxes)
            points = frame_to_image(coords[start:end], crop_boxes, self.heatmap_size)
            yield tag, np.concatenate([points, confidence[start:end, :, None]], axis=-1)
            start = end


# --- the predict command ---------------------------------------------------------------------------


@dataclass
class PredictSummary:
    results: Path  # the COCO keypoint results JSON
    images: int  # images predicted on
    people: int
    overlays: list[Path]
    skipped: list[tuple[str, str]]  # (path, reason) of images that were not used
    skipped_people: list[tuple[str, str]] = field(default_factory=list)  # (path, "annotation N: reason")


def expand_paths(paths, exclude: Path | None = None) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files as given and the images directly inside folders (sorted); missing paths are reported."""
    files, missing = [], []
    exclude = exclude.resolve() if exclude is not None else None
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                           and not p.name.endswith(OVERLAY_SUFFIX))
            files += [p for p in found if exclude is None or p.resolve().parent != exclude]
        elif path.exists():
            files.append(path)
        else:
            missing.append((str(path), "file not found"))
    return files, missing


@dataclass
class ImageBoxes:
    """One image's people in a --boxes file."""

    image_id: int
    file_name: str  # as written in the JSON ("" for a detection results list)
    boxes: np.ndarray  # (P, 4) x, y, w, h as given, degenerate ones included
    labels: list[str]  # (P,) "annotation 17" / "detection 3": how to name a person in a report
    scores: np.ndarray | None = None  # (P,) detector scores (a detection results file), else None


@dataclass
class BoxTable:
    """The people of a --boxes file: a COCO annotation file (matched by file_name under the image root)
    or a COCO detection results list (no file names: matched by numeric file stems)."""

    source: Path
    category_id: int  # the file's person category id, used in the results
    by_name: dict[str, ImageBoxes] = field(default_factory=dict)  # file_name as written -> its people
    by_id: dict[int, ImageBoxes] = field(default_factory=dict)  # detection results: image id -> people
    _by_base: dict | None = field(default=None, repr=False)

    def under_root(self, root: Path) -> list[tuple[Path, ImageBoxes]]:
        """The listed images found under `root` (the folder the JSON's file names are relative to)."""
        found = []
        for name, entry in self.by_name.items():
            path = root / name
            if is_safe_file_name(name) and path.is_file():
                found.append((path, entry))
        return found

    def match(self, path: Path) -> ImageBoxes | None:
        """The entry whose file_name is the tail of `path` (path parts, not just the base name);
        UserError when several are."""
        if not self.by_name:
            return self.by_id.get(int(path.stem)) if path.stem.isdigit() else None
        if self._by_base is None:  # base name -> entries, built once: many files may be matched
            self._by_base = {}
            for name, entry in self.by_name.items():
                self._by_base.setdefault(Path(name).name, []).append(entry)
        parts = path.absolute().parts  # "000000.jpg" run inside seqA/ is seqA/000000.jpg
        hits = [entry for entry in self._by_base.get(path.name, [])
                if parts[len(parts) - len(Path(entry.file_name).parts):] == Path(entry.file_name).parts]
        if len(hits) > 1:
            names = ", ".join(repr(e.file_name) for e in hits[:4])
            raise UserError(f"{path}: matches several images of {self.source} ({names}); give the folder its "
                            "file names are relative to instead")
        return hits[0] if hits else None


def load_boxes_json(path, min_box_score: float = 0.0) -> BoxTable:
    """The person boxes of a COCO-format annotation file (its images and non-crowd person annotations)
    or of a COCO detection results list (hgpose.data.person_boxes: person boxes scoring >= min_box_score,
    their scores kept)."""
    path = Path(path)
    data = read_json(path, "boxes file")
    if isinstance(data, list):  # COCO detection results: no file names, ids are the numeric stems
        from hgpose.data.person_boxes import read_detections

        detections = read_detections(path, min_box_score)
        table = BoxTable(path, 1)
        for image_id in np.unique(detections.image_ids):
            mine = detections.image_ids == image_id
            table.by_id[int(image_id)] = ImageBoxes(
                int(image_id), "", detections.bboxes[mine], [f"detection {k + 1}" for k in range(int(mine.sum()))],
                detections.scores[mine])
    else:
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
        try:
            for im in data["images"]:
                anns = people.get(im["id"], [])
                entry = ImageBoxes(int(im["id"]), str(im["file_name"]), [a["bbox"] for a in anns],
                                   [f"annotation {a.get('id', '?')}" for a in anns])
                if entry.file_name in table.by_name:
                    raise UserError(f"{path}: file_name {entry.file_name!r} is listed twice")
                table.by_name[entry.file_name] = entry
        except (KeyError, TypeError, ValueError, OverflowError):
            raise UserError(f"{path}: an image entry lacks a file_name or an integer id") from None
    for entry in [*table.by_name.values(), *table.by_id.values()]:
        try:
            entry.boxes = np.asarray(entry.boxes, np.float64).reshape(-1, 4)
        except (TypeError, ValueError):
            raise UserError(f"{path}: image id {entry.image_id} has a bbox that is not 4 numbers") from None
    return table


def load_boxes_file(path, min_box_score: float = 0.0) -> BoxTable:
    """--boxes: a .csv box file (hgpose.box_files) by its suffix, else a COCO annotation or detection file."""
    from hgpose.box_files import load_boxes_csv

    if Path(path).suffix.lower() != ".csv":
        return load_boxes_json(path, min_box_score)
    table = BoxTable(Path(path), 1)
    for name, (image_id, boxes) in load_boxes_csv(path).items():
        table.by_name[name] = ImageBoxes(image_id, name, boxes, [f"box {i + 1}" for i in range(len(boxes))])
    return table


def predict_paths(checkpoint, paths, *, boxes_json=None, box=None, out="predictions",
                  min_confidence: float = 0.2, batch_size: int = 32, device="cpu", progress: bool = True,
                  overlays: bool = True, min_box_score: float = 0.0, flip_test: bool = False,
                  decode: str = "quarter") -> PredictSummary:
    """Predict on image files and folders: writes out/keypoints.json (COCO keypoint results) and
    out/<stem>_pose.jpg overlays, each person's box labelled with its index in keypoints.json and its
    score. Unreadable images and degenerate boxes are reported and skipped.

    boxes_json: a COCO annotation file, a COCO detection results list, or a .csv box file
    (hgpose.box_files). With it, a folder is the root its file names are relative to (its listed
    images are used, subfolders included) and a file is matched by its path's tail; image ids and the
    person category id come from the file and pixels are taken as stored (COCO annotations refer to
    them). Otherwise image ids run 1, 2, ... in input order and each photo's EXIF orientation is applied.
    """
    from hgpose.draw import draw_pose
    from hgpose.evaluation.coco import coco_results
    from hgpose.runtime.progress import progress_bar

    out = Path(out)
    table = load_boxes_file(boxes_json, min_box_score) if boxes_json is not None else None
    jobs, skipped = _predict_jobs(paths, table, exclude=out if out.is_dir() else None)
    if not jobs:
        listed = f" listed in {boxes_json}" if table is not None and table.by_name else ""
        raise UserError(f"no images{listed} found in " + ", ".join(map(str, paths)))
    upright = table is None  # COCO annotations refer to stored pixels; a photo is meant upright
    predictor = Predictor.from_checkpoint(checkpoint, device=device, batch_size=batch_size, flip_test=flip_test,
                                          decode=decode)
    bar = progress_bar(total=len(jobs), desc="predict", unit="img", disable=not progress, dynamic_ncols=True)
    skipped_people: list[tuple[str, str]] = []

    def skip(path: Path, reason: str):
        skipped.append((str(path), reason))
        bar.write(f"skipping {path}: {reason}", file=sys.stderr)
        bar.update()

    def items():
        for number, (path, entry) in enumerate(jobs, start=1):
            if entry is _NOT_LISTED:
                skip(path, f"not listed in {boxes_json}")
                continue
            image_id, bboxes, labels, name, box_scores = number, None, [], path.name, None
            if entry is not None:
                image_id, bboxes, labels, box_scores = entry.image_id, entry.boxes, entry.labels, entry.scores
                name = entry.file_name or name
            elif box is not None:
                bboxes, labels = np.asarray([box], np.float64), ["--box"]
            keep = None
            if bboxes is not None:
                bad = bad_box_mask(bboxes)
                for i in np.flatnonzero(bad):
                    _skip_person(skipped_people, bar, path, image_id, labels[i], bboxes[i], "degenerate box")
                keep, bboxes = np.flatnonzero(~bad), bboxes[~bad]
                box_scores = box_scores[~bad] if box_scores is not None else None
            result = images.crop_file(path, bboxes=bboxes, input_size=predictor.input_size, upright=upright)
            if result.problem:
                skip(path, result.problem)
                continue
            size = predictor.input_size
            crops = np.stack(result.crops) if result.crops else np.zeros((0, 3, size, size), np.uint8)
            crop_boxes = result.boxes
            if bboxes is not None:  # a box wholly outside the image crops nothing of the person
                inside = images.clip_bboxes(bboxes, result.size)[:, 2:].min(axis=1) > 0
                for i in np.flatnonzero(~inside):
                    _skip_person(skipped_people, bar, path, image_id, labels[keep[i]], bboxes[i],
                                 "box outside the image")
                crops, crop_boxes = crops[inside], crop_boxes[inside]
                bboxes = bboxes[inside]
                box_scores = box_scores[inside] if box_scores is not None else None
            yield crops, crop_boxes, (path, image_id, name, bboxes, box_scores)

    results, written, stems, people, done = [], [], set(), 0, 0
    for (path, image_id, name, person_boxes, box_scores), keypoints in predictor.predict_crops_many(items()):
        people, done, first, entries = people + len(keypoints), done + 1, len(results), []
        if len(keypoints):
            entries = coco_results(np.full(len(keypoints), image_id), keypoints[..., :2], keypoints[..., 2],
                                   table.category_id if table is not None else 1)
            if box_scores is not None:  # detections: the detector's score, and the protocol's instance score
                from hgpose.evaluation.oks import rescore

                for entry, box_score, score in zip(entries, box_scores, rescore(box_scores, keypoints[..., 2])):
                    entry.update(box_score=float(box_score), score=float(score))
            results += [entry | {"file_name": name} for entry in entries]
        if overlays:
            # each person labelled with its index in keypoints.json and its score
            labels = [f"#{first + i} {entry['score']:.2f}" for i, entry in enumerate(entries)]
            written += _write_overlay(path, keypoints, out / _unique_name(path.stem, stems), upright,
                                      min_confidence, draw_pose, person_boxes, labels)
        bar.update()
    bar.close()
    results_path = atomic_write_json(out / "keypoints.json", results, indent=None)
    return PredictSummary(results_path, done, people, written, skipped, skipped_people)


_NOT_LISTED = object()  # a file the --boxes JSON does not list


def _predict_jobs(paths, table: BoxTable | None, exclude: Path | None):
    """[(image path, ImageBoxes, None or _NOT_LISTED)], [(path, reason)] for paths that do not exist."""
    if table is None or not table.by_name:
        files, missing = expand_paths(paths, exclude)
        if table is None:
            return [(f, None) for f in files], missing
        return [(f, table.match(f) or _NOT_LISTED) for f in files], missing
    jobs, missing = [], []
    for path in map(Path, paths):
        if path.is_dir():
            jobs += table.under_root(path)
        elif path.exists():
            jobs.append((path, table.match(path) or _NOT_LISTED))
        else:
            missing.append((str(path), "file not found"))
    return jobs, missing


def _skip_person(skipped_people: list, bar, path: Path, image_id: int, label: str, bbox, reason: str) -> None:
    shown = ", ".join(f"{v:g}" for v in np.asarray(bbox, np.float64))
    note = f"image id {image_id}, {label}: {reason} [{shown}], person skipped"
    skipped_people.append((str(path), note))
    bar.write(f"{path}: {note}", file=sys.stderr)


def _write_overlay(path: Path, keypoints, target: Path, upright: bool, min_confidence: float, draw_pose,
                   person_boxes, labels) -> list:
    """The overlay of one image, drawn on the same view (upright or stored) the keypoints refer to."""
    try:
        image = read_image(path, upright=upright)
    except UserError:
        return []
    drawn = draw_pose(image, keypoints, min_confidence, boxes=as_boxes(person_boxes, image.shape), labels=labels)
    ok, encoded = cv2.imencode(".jpg", drawn[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    return [atomic_write_bytes(target, encoded.tobytes())] if ok else []


def _unique_name(stem: str, used: set) -> str:
    name, n = stem + OVERLAY_SUFFIX, 1
    while name in used:
        n += 1
        name = f"{stem}_{n}{OVERLAY_SUFFIX}"
    used.add(name)
    return name
