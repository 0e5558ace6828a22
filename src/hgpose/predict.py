"""Inference on images: person boxes -> square crops -> heatmaps -> 17 keypoints in image pixels.

    predictor = hgpose.load("runs/train/best.safetensors")
    keypoints = predictor.predict("photo.jpg", boxes=[[x, y, w, h]])  # (P, 17, 3): x, y, confidence

Crops are made exactly as for training (hgpose.data.transforms: a square 1.25 x the box's longer
side, centred on it); with no boxes the whole image is one person. Keypoints come back in the image
convention of transforms.py (pixel i covers [i, i+1)), confidence = the heatmap's peak value.
Images are read as stored, ignoring EXIF orientation, as COCO's annotations are.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from hgpose.data.coco import MAX_IMAGE_PIXELS
from hgpose.data.transforms import crop_box_from_bbox, crop_image, frame_to_image
from hgpose.fileio import UserError, atomic_write_bytes, atomic_write_json, read_json
from hgpose.model import HourglassNet, load_model, to_model_input

__all__ = ["Predictor", "predict_paths", "read_image", "to_model_input", "PredictSummary"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
OVERLAY_SUFFIX = "_pose.jpg"


# --- images and boxes ---------------------------------------------------------------------------


def read_image(path) -> np.ndarray:
    """RGB uint8 (H, W, 3) from an image file; UserError naming the file when it cannot be read."""
    from hgpose.data.dataset import image_header_size

    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except OSError as exc:
        raise UserError(f"{path}: unreadable ({exc.strerror or exc})") from None
    size = image_header_size(data)
    if size is not None and size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise UserError(f"{path}: image too large ({size[0]}x{size[1]})")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION) \
        if data else None
    if image is None:
        raise UserError(f"{path}: not a readable image")
    return np.ascontiguousarray(image[:, :, ::-1])  # BGR -> RGB


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
    bad = ~np.isfinite(boxes).all(axis=1) | (boxes[:, 2] <= 0) | (boxes[:, 3] <= 0)
    if bad.any():
        raise UserError(f"boxes: box {int(np.flatnonzero(bad)[0])} is {boxes[bad][0].tolist()}; "
                        "expected finite x, y and positive w, h")
    return boxes


# --- the predictor --------------------------------------------------------------------------------


@dataclass
class Predictor:
    """A model ready for inference; `predict` for one image, `predict_many` to batch across images."""

    model: HourglassNet
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    batch_size: int = 32

    @classmethod
    def from_checkpoint(cls, checkpoint, device="cpu", batch_size: int = 32) -> Predictor:
        device = torch.device(device)
        return cls(load_model(checkpoint, device=device), device, batch_size)

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
        from hgpose.evaluate import decode_heatmaps

        crops = torch.as_tensor(np.asarray(crops))
        coords, confidence = [], []
        self.model.eval()
        for start in range(0, len(crops), self.batch_size):
            batch = to_model_input(crops[start : start + self.batch_size].to(self.device))
            c, p = decode_heatmaps(self.model(batch))
            coords.append(c.cpu())
            confidence.append(p.cpu())
        k = self.model.config.num_keypoints
        if not coords:
            return np.zeros((0, k, 2), np.float32), np.zeros((0, k), np.float32)
        return torch.cat(coords).numpy(), torch.cat(confidence).numpy()

    def predict(self, image, boxes=None) -> np.ndarray:
        """(P, 17, 3) x, y, confidence in image pixels, one row per box (one for the whole image
        when boxes is None). image: RGB uint8 array (H, W, 3) or a path; boxes: (P, 4) x, y, w, h."""
        return next(self.predict_many([(image, boxes, None)]))[1]

    def predict_many(self, items: Iterable[tuple]) -> Iterator[tuple[object, np.ndarray]]:
        """For each (image, boxes, tag) yield (tag, (P, 17, 3) keypoints), in order; the crops of
        consecutive images share batches, so many one-person images run batch_size at a time."""
        pending: list[tuple[object, np.ndarray]] = []  # (tag, crop boxes) not yet yielded
        crops: list[np.ndarray] = []
        for image, boxes, tag in items:
            image = as_rgb(image)
            crop_boxes = crop_box_from_bbox(as_boxes(boxes, image.shape))
            crops += [crop_image(image, box, self.input_size).transpose(2, 0, 1) for box in crop_boxes]
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


def load_boxes_json(path, min_box_score: float = 0.0) -> dict[str, tuple]:
    """file name -> (image id, (P, 4) person boxes, (P,) detector scores or None) from a COCO-format
    annotation file (its images and its non-crowd person annotations), or from a COCO detection results
    list (hgpose.detections: person boxes scoring >= min_box_score; matched by numeric file stems)."""
    data = read_json(path, "boxes file")
    if isinstance(data, list):  # COCO detection results: no file names, ids are the numeric stems
        from hgpose.detections import read_detections

        detections = read_detections(path, min_box_score)
        return {f"#{i}": (int(i), detections.bboxes[detections.image_ids == i],
                          detections.scores[detections.image_ids == i])
                for i in np.unique(detections.image_ids)}
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise UserError(f"{path}: expected a COCO annotation file with 'images' and 'annotations'")
    person_ids = {c.get("id") for c in data.get("categories", []) if c.get("name") == "person"} or {1}
    boxes: dict[int, list] = {}
    for ann in data.get("annotations", []):
        if ann.get("category_id") in person_ids and not ann.get("iscrowd", 0) and "bbox" in ann:
            boxes.setdefault(ann["image_id"], []).append(ann["bbox"])
    try:
        return {Path(im["file_name"]).name: (int(im["id"]), np.asarray(boxes.get(im["id"], []), np.float64), None)
                for im in data["images"]}
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{path}: an image entry lacks a file_name or an integer id") from None


def _lookup(table: dict, path: Path):
    if path.name in table:
        return table[path.name]
    return table.get(f"#{int(path.stem)}") if path.stem.isdigit() else None


def predict_paths(checkpoint, paths, *, boxes_json=None, box=None, out="predictions",
                  min_confidence: float = 0.2, batch_size: int = 32, device="cpu", progress: bool = True,
                  overlays: bool = True, min_box_score: float = 0.0) -> PredictSummary:
    """Predict on image files and folders: writes out/keypoints.json (COCO keypoint results; image_id
    from boxes_json, matched by file name, else 1, 2, ... in input order) and out/<stem>_pose.jpg
    overlays. Unreadable images are reported on stderr and skipped."""
    from tqdm import tqdm

    from hgpose.draw import draw_pose
    from hgpose.evaluate import coco_results

    out = Path(out)
    files, skipped = expand_paths(paths, exclude=out if out.is_dir() else None)
    if not files:
        raise UserError("no images found in " + ", ".join(map(str, paths)))
    table = load_boxes_json(boxes_json, min_box_score) if boxes_json is not None else None
    predictor = Predictor.from_checkpoint(checkpoint, device=device, batch_size=batch_size)
    bar = tqdm(total=len(files), desc="predict", unit="img", disable=not progress, dynamic_ncols=True)

    def skip(path: Path, reason: str):
        skipped.append((str(path), reason))
        bar.write(f"skipping {path}: {reason}", file=sys.stderr)
        bar.update()

    def items():
        for number, path in enumerate(files, start=1):
            image_id, boxes, box_scores = number, None, None
            if table is not None:
                found = _lookup(table, path)
                if found is None:
                    skip(path, f"not listed in {boxes_json}")
                    continue
                image_id, boxes, box_scores = found
            elif box is not None:
                boxes = [box]
            try:
                image = read_image(path)
            except UserError as exc:
                skip(path, str(exc).removeprefix(f"{path}: "))
                continue
            yield image, boxes, (path, image_id, image, box_scores)

    results, written, stems, people, done = [], [], set(), 0, 0
    for (path, image_id, image, box_scores), keypoints in predictor.predict_many(items()):
        people, done = people + len(keypoints), done + 1
        if len(keypoints):
            entries = coco_results(np.full(len(keypoints), image_id), keypoints[..., :2], keypoints[..., 2])
            if box_scores is not None:  # detections: the detector's score, and the protocol's instance score
                from hgpose.oks import rescore

                for entry, box_score, score in zip(entries, box_scores, rescore(box_scores, keypoints[..., 2])):
                    entry.update(box_score=float(box_score), score=float(score))
            results += [entry | {"file_name": path.name} for entry in entries]
        if overlays:
            target = out / _unique_name(path.stem, stems)
            drawn = draw_pose(image, keypoints, min_confidence)
            ok, encoded = cv2.imencode(".jpg", drawn[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
            if ok:
                written.append(atomic_write_bytes(target, encoded.tobytes()))
        bar.update()
    bar.close()
    results_path = atomic_write_json(out / "keypoints.json", results, indent=None)
    return PredictSummary(results_path, done, people, written, skipped)


def _unique_name(stem: str, used: set) -> str:
    name, n = stem + OVERLAY_SUFFIX, 1
    while name in used:
        n += 1
        name = f"{stem}_{n}{OVERLAY_SUFFIX}"
    used.add(name)
    return name
