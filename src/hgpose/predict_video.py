"""`hgpose predict` on a video file: poses frame by frame, with an overlay video.

Frames are decoded by OpenCV (cv2.VideoCapture, which turns a rotated phone video upright as players
show it) and cropped like an in-memory image (hgpose.predict.person_crops), one person per frame from
--box or the whole frame. Each result in keypoints.json carries `frame`, the frame's index in the
video counting from 0, and an image id of its own. The overlay video (cv2.VideoWriter, MPEG-4 Part 2
"mp4v", the input's frame rate) is written beside a temporary name and renamed when complete, so an
interrupted run leaves no half video under the final name.
"""

from __future__ import annotations

import itertools
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from hgpose.data.images import clip_bboxes
from hgpose.data.person_boxes import as_boxes
from hgpose.draw import draw_pose
from hgpose.runtime.files import TEMP_PREFIX
from hgpose.runtime.progress import progress_bar

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}
DEFAULT_FPS = 25.0  # when the container states none
FOURCC = "mp4v"


def split_videos(paths) -> tuple[list[Path], list[Path]]:
    """(video files given directly, by their suffix; every other path)."""
    videos, others = [], []
    for path in map(Path, paths):
        (videos if path.suffix.lower() in VIDEO_SUFFIXES and path.is_file() else others).append(path)
    return videos, others


def read_frames(capture) -> Iterator[np.ndarray]:
    """RGB uint8 frames until the video ends (or stops decoding)."""
    while True:
        ok, frame = capture.read()
        if not ok or frame is None:
            return
        yield np.ascontiguousarray(frame[:, :, ::-1])


def predict_video(predictor, path: Path, run, *, name: str, first_image_id: int,
                  overlay: Path | None) -> tuple[int, Path | None, str | None]:
    """Predict every frame of one video; results go to run.add_results (hgpose.predict._Run). Returns
    (frames predicted, the overlay video written or None, why the video could not be used or None)."""
    # FFmpeg's own lines ("moov atom not found") would interleave with ours, which say what went wrong
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET, unless the user chose a level
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            return 0, None, "cannot be opened as a video (OpenCV)"
        frames = read_frames(capture)
        first = next(frames, None)
        if first is None:
            return 0, None, "no frame could be decoded"
        height, width = first.shape[:2]
        boxes = None if run.box is None else np.asarray([run.box], np.float64)
        problem = _box_problem(boxes, width, height)
        if problem:
            return 0, None, problem
        fps = capture.get(cv2.CAP_PROP_FPS)
        fps = fps if math.isfinite(fps) and fps > 0 else DEFAULT_FPS
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
        bar = progress_bar(total=total, desc=name, unit="frame", disable=not run.progress, leave=False,
                           dynamic_ncols=True)
        with _OverlayVideo(overlay, fps, (width, height)) as writer:
            count = 0
            items = ((frame, boxes, (index, frame)) for index, frame in enumerate(itertools.chain([first], frames)))
            for (index, frame), keypoints in predictor.predict_many(items, upright=False):
                entries = run.add_results(keypoints, first_image_id + index, {"file_name": name, "frame": index})
                writer.add(frame, keypoints, boxes, run.labels(entries), run.min_confidence)
                count += 1
                bar.update()
        bar.close()
        return count, writer.written, None
    finally:
        capture.release()


def _box_problem(boxes, width: int, height: int) -> str | None:
    if boxes is not None and not clip_bboxes(boxes, (width, height))[0, 2:].min() > 0:
        shown = ", ".join(f"{v:g}" for v in boxes[0])
        return f"--box [{shown}] lies outside its {width}x{height} frames"
    return None


class _OverlayVideo:
    """Overlay frames into `target` (None: nothing is written), through a temporary file renamed on success."""

    def __init__(self, target: Path | None, fps: float, size: tuple[int, int]):
        self.target, self.written, self.writer = target, None, None
        if target is None:
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        # the suffix stays .mp4: it is how the writer chooses the container
        self.temporary = target.with_name(f"{TEMP_PREFIX}{os.getpid()}-{target.name}")
        self.writer = cv2.VideoWriter(str(self.temporary), cv2.VideoWriter_fourcc(*FOURCC), fps, size)
        if not self.writer.isOpened():
            print(f"{target}: OpenCV cannot write {FOURCC} video here; no overlay video", file=sys.stderr)
            self.writer = None

    def add(self, frame: np.ndarray, keypoints, boxes, labels, min_confidence: float) -> None:
        if self.writer is not None:
            drawn = draw_pose(frame, keypoints, min_confidence, boxes=as_boxes(boxes, frame.shape), labels=labels)
            self.writer.write(np.ascontiguousarray(drawn[:, :, ::-1]))

    def __enter__(self):
        return self

    def __exit__(self, kind, *_):
        if self.writer is None:
            return
        self.writer.release()
        if kind is None:
            os.replace(self.temporary, self.target)
            self.written = self.target
        else:
            self.temporary.unlink(missing_ok=True)
