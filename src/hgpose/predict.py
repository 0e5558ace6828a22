"""Inference on images: person boxes -> square crops -> heatmaps -> 17 keypoints in image pixels.

    predictor = hgpose.load("runs/train/best.safetensors")
    keypoints = predictor.predict("photo.jpg", boxes=[[x, y, w, h]])  # (P, 17, 3): x, y, confidence

Crops are made exactly as for training and evaluate (hgpose.data.images.crop_file: the box clipped
to the image, a square 1.25 x its longer side centred on it, a large person's JPEG decoded at reduced
size); with no boxes the whole image is one person. The network runs as evaluate runs it (channels-last,
the same --precision with the same default, "auto"), so both give identical keypoints on the same image
and box. Keypoints come back in the image convention of transforms.py (pixel i covers [i, i+1)),
confidence = the heatmap's peak value. Boxes a person wrote for a photo (--box, a CSV box file) refer to
it as every viewer shows it, turned upright by its EXIF orientation; COCO annotation and detection
files refer to the stored pixels, so with them the orientation is not applied.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
import torch
from safetensors import safe_open

from hgpose.data import images
from hgpose.data.coco import annotation_path, is_safe_file_name
from hgpose.data.origin import GENERATED, ORIGIN_KEY, annotation_origin
from hgpose.data.person_boxes import BoxTable, ImageBoxes, Unlisted, as_boxes, bad_box_mask, load_boxes_file
from hgpose.data.transforms import crop_box_from_bbox, crop_image, frame_to_image
from hgpose.draw import draw_pose
from hgpose.evaluation.coco import coco_results
from hgpose.evaluation.oks import rescore
from hgpose.model.heatmaps import check_decode_method, decode_heatmaps, flip_test
from hgpose.model.hourglass import HourglassNet, to_model_input
from hgpose.model.weights import load_model
from hgpose.predict_video import predict_video, split_videos
from hgpose.runtime.files import UserError, atomic_write_bytes, atomic_write_json
from hgpose.runtime.precision import PRECISIONS, autocast, resolve_precision
from hgpose.runtime.progress import progress_bar
from hgpose.train.run_dir import checkpoint_run_record

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
    # as evaluate --precision, same default: "auto" is bf16 where the hardware computes it natively
    precision: str = "auto"

    @classmethod
    def from_checkpoint(cls, checkpoint, device="cpu", batch_size: int = 32, flip_test: bool = False,
                        decode: str = "quarter", precision: str = "auto") -> Predictor:
        """The checkpoint's model, laid out and run as evaluate runs it; precision is resolved for the
        device here, so `.precision` says what runs."""
        check_decode_method(decode)
        if precision not in PRECISIONS:
            raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        device = torch.device(device)
        model = load_model(checkpoint, device=device)
        return cls(model, device, batch_size, flip_test, decode, resolve_precision(precision, device))

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
        # channels-last and autocast exactly as evaluate's infer(): the same kernels give the same numbers
        self.model.to(memory_format=torch.channels_last)
        for start in range(0, len(crops), self.batch_size):
            batch = to_model_input(crops[start : start + self.batch_size].to(self.device))
            batch = batch.contiguous(memory_format=torch.channels_last)
            with autocast(self.device, self.precision):
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
    images: int  # images predicted on (a video's frames included)
    people: int
    overlays: list[Path]
    skipped: list[tuple[str, str]]  # (path, reason) of images that were not used
    skipped_people: list[tuple[str, str]] = field(default_factory=list)  # (path, "annotation N: reason")
    notes: list[str] = field(default_factory=list)  # what the user should know once, said before the run
    frames: int = 0  # of them, video frames


def expand_paths(paths, exclude: Path | None = None,
                 recursive: bool = False) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files as given and the images inside folders (directly inside, or at any depth when recursive;
    sorted); missing paths are reported."""
    files, missing = [], []
    exclude = exclude.resolve() if exclude is not None else None
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in (path.rglob("*") if recursive else path.iterdir()) if p.is_file()
                           and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.endswith(OVERLAY_SUFFIX))
            files += [p for p in found if exclude is None or exclude not in p.resolve().parents]
        elif path.exists():
            files.append(path)
        else:
            missing.append((str(path), "file not found"))
    return files, missing


WHOLE_IMAGE_NOTE = ("no person boxes given: each whole image is treated as one person; for images with several "
                    "people pass --boxes FILE (a COCO annotation file, or a CSV of file_name,x,y,w,h rows) or "
                    "--box X,Y,W,H")


def predict_paths(checkpoint, paths, *, boxes_json=None, box=None, out="predictions",
                  min_confidence: float = 0.2, batch_size: int = 32, device="cpu", progress: bool = True,
                  overlays: bool = True, min_box_score: float = 0.0, flip_test: bool = False,
                  decode: str = "quarter", precision: str = "auto", annotations=None) -> PredictSummary:
    """Predict on image files, folders and video files: writes out/keypoints.json (COCO keypoint results)
    and overlays (out/<name>_pose.jpg per image, out/<name>_pose.mp4 per video), each person's box
    labelled with its index in keypoints.json and its score. Unreadable images and degenerate boxes
    are reported and skipped; notes for the user (whole images as people, a model trained on generated
    figures) go to stderr once, before the run.

    boxes_json: a COCO annotation file, a COCO detection results list (its image ids named by the
    `annotations` file's images when given, else by numeric file stems), or a .csv box file
    (load_boxes_csv). With it, a folder is the root its file names are relative to (its listed
    images are used, subfolders included; listed ones that are missing are reported) and a file is
    matched by its path's tail; image ids and the person category id come from the file. Boxes a
    person wrote (--box, CSV) refer to the upright photo (EXIF orientation applied); COCO annotation
    and detection files to the stored pixels, whose size must agree with the width and height they
    state. Otherwise image ids run 1, 2, ... in input order, a video's frames taking the next ids.
    """
    out = Path(out)
    table = load_boxes_file(boxes_json, min_box_score, annotations) if boxes_json is not None else None
    if annotations is not None and table is None:
        raise UserError("--annotations names the images of a detection results file given as --boxes")
    videos, paths = split_videos(paths)
    if videos and table is not None:
        raise UserError(f"{videos[0]}: --boxes files list images, not video frames; use --box X,Y,W,H or no box")
    jobs, skipped = _predict_jobs(paths, table, exclude=out if out.is_dir() else None)
    if not jobs and not videos:
        listed = f" listed in {boxes_json}" if table is not None and table.by_name else ""
        raise UserError(f"no images{listed} found in " + ", ".join(map(str, paths)))
    predictor = Predictor.from_checkpoint(checkpoint, device=device, batch_size=batch_size, flip_test=flip_test,
                                          decode=decode, precision=precision)  # a bad checkpoint: its one line only
    notes = [WHOLE_IMAGE_NOTE] if table is None and box is None else []
    notes += _origin_notes(checkpoint, table)
    for line in notes:
        print(line, file=sys.stderr)
    run = _Run(out, table, box, min_confidence, overlays, progress, skipped)
    run.images(predictor, jobs)
    run.videos(predictor, videos, first_image_id=len(jobs) + 1)
    results_path = atomic_write_json(out / "keypoints.json", run.results, indent=None)
    return PredictSummary(results_path, run.done, run.people, run.written, run.skipped, run.skipped_people, notes,
                          run.frames)


def checkpoint_origin(checkpoint) -> str | None:
    """The recorded origin of a checkpoint's training data: its metadata, else the data its run's
    config.yaml names (RUN/best.safetensors or RUN/checkpoints/epoch_NNN.safetensors); None if unknown."""
    try:
        with safe_open(str(checkpoint), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception:  # not ours to judge here: loading the model says what is wrong with the file
        return None
    if ORIGIN_KEY in metadata:
        return metadata[ORIGIN_KEY] or None
    return _run_data_origin(Path(checkpoint))


def _run_data_origin(checkpoint: Path) -> str | None:
    config = checkpoint_run_record(checkpoint)
    data, split = config.get("data"), config.get("train_split", "train2017")
    if not isinstance(data, str) or not isinstance(split, str):
        return None
    return annotation_origin(annotation_path(data, split))


def _origin_notes(checkpoint, table: BoxTable | None) -> list[str]:
    """One line when the model learnt from generated figures and is run on anything else."""
    if checkpoint_origin(checkpoint) != GENERATED:
        return []
    if table is not None and not table.upright and annotation_origin(table.source) == GENERATED:
        return []  # generated images with their own boxes: what it was trained for
    return [f"note: {checkpoint} was trained on figures generated by `hgpose synth`, not on photos: its "
            "skeletons on other images say nothing of how well the method does on real people"]


@dataclass
class _Run:
    """One predict run's state: what it writes, reports and counts."""

    out: Path
    table: BoxTable | None
    box: list | None
    min_confidence: float
    overlays: bool
    progress: bool
    skipped: list
    skipped_people: list = field(default_factory=list)
    results: list = field(default_factory=list)
    written: list = field(default_factory=list)
    people: int = 0
    done: int = 0  # images and video frames predicted on
    frames: int = 0
    bar: object = None
    _overlay_names: set = field(default_factory=set)

    def images(self, predictor: Predictor, jobs) -> None:
        if not jobs:
            return
        names = _display_names(jobs)
        upright = self.table is None or self.table.upright
        self.bar = progress_bar(total=len(jobs), desc="predict", unit="img", disable=not self.progress,
                                dynamic_ncols=True)

        def items():
            for number, ((path, entry), name) in enumerate(zip(jobs, names), start=1):
                if isinstance(entry, Unlisted):
                    self.skip(path, entry.reason)
                    continue
                image_id = entry.image_id if entry is not None else number
                made = self.crops(path, entry, image_id, predictor.input_size, upright)
                if made is not None:
                    crops, crop_boxes, person_boxes, box_scores = made
                    yield crops, crop_boxes, (path, image_id, name, person_boxes, box_scores)

        for (path, image_id, name, person_boxes, box_scores), keypoints in predictor.predict_crops_many(items()):
            entries = self.add_results(keypoints, image_id, {"file_name": name}, box_scores)
            if self.overlays:
                target = self.out / _overlay_name(name, OVERLAY_SUFFIX, self._overlay_names)
                self.written += _write_overlay(path, keypoints, target, upright, self.min_confidence,
                                               person_boxes, self.labels(entries))
            self.bar.update()
        self.bar.close()

    def crops(self, path: Path, entry, image_id: int, input_size: int, upright: bool):
        """(crops, crop boxes, person boxes, box scores) of one image's usable people, or None when the
        image cannot be used (reported)."""
        bboxes, labels, box_scores, size, extent = None, [], None, None, None
        if entry is not None:
            bboxes, labels, box_scores, size, extent = entry.boxes, entry.labels, entry.scores, entry.size, entry.extent
        elif self.box is not None:
            bboxes, labels = np.asarray([self.box], np.float64), ["--box"]
        keep = None
        if bboxes is not None:
            bad = bad_box_mask(bboxes)
            for i in np.flatnonzero(bad):
                self.skip_person(path, image_id, labels[i], bboxes[i], "degenerate box")
            keep = np.flatnonzero(~bad)
        result = images.crop_file(path, bboxes=None if keep is None else bboxes[keep], input_size=input_size,
                                  upright=upright, expected_size=size, extent=extent)
        if result.problem:
            self.skip(path, result.problem)
            return None
        if result.warning:
            self.bar.write(f"{path}: {result.warning}", file=sys.stderr)
        crops = np.stack(result.crops) if result.crops else np.zeros((0, 3, input_size, input_size), np.uint8)
        crop_boxes = result.boxes
        if keep is None:
            return crops, crop_boxes, None, None
        # a box wholly outside the image crops nothing of the person
        inside = images.clip_bboxes(bboxes[keep], result.size)[:, 2:].min(axis=1) > 0
        for i in keep[~inside]:
            self.skip_person(path, image_id, labels[i], bboxes[i], "box outside the image")
        keep = keep[inside]
        return crops[inside], crop_boxes[inside], bboxes[keep], None if box_scores is None else box_scores[keep]

    def add_results(self, keypoints, image_id: int, extra: dict, box_scores=None) -> list[dict]:
        """COCO results of one image's (or frame's) people, appended to keypoints.json's list."""
        self.people, self.done = self.people + len(keypoints), self.done + 1
        if not len(keypoints):
            return []
        entries = coco_results(np.full(len(keypoints), image_id), keypoints[..., :2], keypoints[..., 2],
                               self.table.category_id if self.table is not None else 1)
        if box_scores is not None:  # detections: the detector's score, and the protocol's instance score
            for entry, box_score, score in zip(entries, box_scores, rescore(box_scores, keypoints[..., 2])):
                entry.update(box_score=float(box_score), score=float(score))
        entries = [entry | extra for entry in entries]
        self.results += entries
        return entries

    def labels(self, entries: list[dict]) -> list[str]:
        """Each person's overlay label: its index in keypoints.json (entries were just appended) and score."""
        first = len(self.results) - len(entries)
        return [f"#{first + i} {entry['score']:.2f}" for i, entry in enumerate(entries)]

    def videos(self, predictor: Predictor, videos: list[Path], first_image_id: int) -> None:
        names = _display_names([(path, None) for path in videos])
        for path, name in zip(videos, names):
            target = self.out / _overlay_name(name, "_pose.mp4", self._overlay_names) if self.overlays else None
            frames, overlay, problem = predict_video(predictor, path, self, name=name, first_image_id=first_image_id,
                                                     overlay=target)
            if problem:
                self.skipped.append((str(path), problem))
                print(f"skipping {path}: {problem}", file=sys.stderr)
            first_image_id += frames
            self.frames += frames
            self.written += [overlay] if overlay is not None else []

    def skip(self, path: Path, reason: str) -> None:
        self.skipped.append((str(path), reason))
        self.bar.write(f"skipping {path}: {reason}", file=sys.stderr)
        self.bar.update()

    def skip_person(self, path: Path, image_id: int, label: str, bbox, reason: str) -> None:
        shown = ", ".join(f"{v:g}" for v in np.asarray(bbox, np.float64))
        note = f"image id {image_id}, {label}: {reason} [{shown}], person skipped"
        self.skipped_people.append((str(path), note))
        self.bar.write(f"{path}: {note}", file=sys.stderr)


def _predict_jobs(paths, table: BoxTable | None, exclude: Path | None):
    """[(image path, its ImageBoxes, None without --boxes, or Unlisted)] and [(path, reason)] for paths
    that do not exist and, under a folder given with a --boxes file of names, listed images missing there.
    A file given twice (a folder and a file in it) is used once."""
    if table is None:
        files, missing = expand_paths(paths, exclude)
        return _once([(f, None) for f in files]), missing
    if not table.by_name:  # a detection results list without names: numeric stems, in sub-folders too
        files, missing = expand_paths(paths, exclude, recursive=True)
        jobs = _once([(f, table.match(f)) for f in files])
        _one_file_per_entry(jobs, table)
        return jobs, missing
    jobs, missing, roots = [], [], []
    for path in map(Path, paths):
        if path.is_dir():
            roots.append(path)
            jobs += table.under_root(path)
        elif path.exists():
            jobs.append((path, table.match(path)))
        else:
            missing.append((str(path), "file not found"))
    jobs = _once(jobs)
    _one_file_per_entry(jobs, table)
    if roots:
        found = {id(entry) for _, entry in jobs}
        absent = [name for name, entry in table.by_name.items() if id(entry) not in found]
        reason = f"listed in {table.source}, not found under {', '.join(map(str, roots))}"
        missing += [(name, reason) for name in absent]
    return jobs, missing


def _once(jobs: list) -> list:
    """The jobs with each file (by its resolved path) once, in first-given order."""
    seen, kept = set(), []
    for job in jobs:
        key = job[0].resolve()
        if key not in seen:
            seen.add(key)
            kept.append(job)
    return kept


def _one_file_per_entry(jobs: list, table: BoxTable) -> None:
    """UserError when one entry of the box file (a CSV row's name, a file_name, an image id) would be
    applied to several given files: its boxes cannot be right for all of them."""
    by_entry: dict[int, list[Path]] = {}
    for path, entry in jobs:
        if isinstance(entry, ImageBoxes):
            by_entry.setdefault(id(entry), []).append(path)
    for paths in by_entry.values():
        if len(paths) > 1:
            entry = next(e for p, e in jobs if p is paths[0])
            what = repr(entry.file_name) if entry.file_name else f"image id {entry.image_id}"
            common = Path(os.path.commonpath([p.resolve().parent for p in paths]))
            example = paths[0].resolve().relative_to(common).as_posix()
            shown = ", ".join(map(str, paths[:4])) + (" ..." if len(paths) > 4 else "")
            raise UserError(f"{table.source}: {what} matches {len(paths)} of the given files ({shown}); name each "
                            f"image by its path relative to the image root (e.g. {example}) or give one of them")


def _display_names(jobs) -> list[str]:
    """The name each image is shown and its overlay written under: its --boxes file_name (a path under
    the image root), else its base name; base names shared by several files keep their folders
    (relative to the folders' common parent), so that each overlay says which file it is."""
    names = [entry.file_name if isinstance(entry, ImageBoxes) and entry.file_name and is_safe_file_name(entry.file_name)
             else path.name for path, entry in jobs]
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(name, []).append(i)
    for positions in groups.values():
        if len(positions) > 1:
            resolved = [jobs[i][0].resolve() for i in positions]
            common = Path(os.path.commonpath([p.parent for p in resolved]))
            for i, path in zip(positions, resolved):
                names[i] = path.relative_to(common).as_posix()
    return names


def _overlay_name(name: str, suffix: str, used: set) -> str:
    """name's overlay, relative to the output folder (sub-folders kept), made unique among `used`."""
    stem = PurePosixPath(name).with_suffix("").as_posix()
    overlay, n = stem + suffix, 1
    while overlay in used:
        n += 1
        overlay = f"{stem}_{n}{suffix}"
    used.add(overlay)
    return overlay


def _write_overlay(path: Path, keypoints, target: Path, upright: bool, min_confidence: float,
                   person_boxes, labels) -> list:
    """The overlay of one image, drawn on the same view (upright or stored) the keypoints refer to."""
    try:
        image = read_image(path, upright=upright)
    except UserError:
        return []
    drawn = draw_pose(image, keypoints, min_confidence, boxes=as_boxes(person_boxes, image.shape), labels=labels)
    ok, encoded = cv2.imencode(".jpg", drawn[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    return [atomic_write_bytes(target, encoded.tobytes())] if ok else []
