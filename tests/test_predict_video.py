"""`hgpose predict` on a video file: poses per frame with the frame index, and an overlay video, on a
short video the test writes with OpenCV."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

import hgpose
from hgpose.cli import main
from hgpose.model.hourglass import ModelConfig, build_model
from hgpose.model.weights import save_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FRAMES, WIDTH, HEIGHT = 7, 96, 72


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_model(build_model(ModelConfig(depth=2, features=32, input_size=64)),
                      tmp_path_factory.mktemp("video") / "tiny.safetensors")


def _write_video(path, frames: int = FRAMES):
    """A Motion-JPEG AVI: a textured background with a bright block moving left to right."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (WIDTH, HEIGHT))
    assert writer.isOpened()
    background = np.random.default_rng(0).integers(0, 120, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    for i in range(frames):
        frame = background.copy()
        frame[20:60, 8 + 10 * i : 24 + 10 * i] = 250
        writer.write(frame)
    writer.release()
    return path


def _decoded_frames(path) -> list[np.ndarray]:
    """The video's frames as OpenCV decodes them, RGB."""
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame[:, :, ::-1].copy())
    capture.release()
    return frames


def _predict(capsys, checkpoint, *args) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["predict", "--checkpoint", str(checkpoint), "--no-progress", *map(str, args)])
    return code, capsys.readouterr().err


def test_a_video_gives_poses_per_frame_and_an_overlay_video(checkpoint, tmp_path, capsys):
    video = _write_video(tmp_path / "clip.avi")
    out = tmp_path / "out"
    code, err = _predict(capsys, checkpoint, video, "--box", "4,10,60,56", "--out", out, "--batch-size", "3")
    assert code == 0, err
    results = json.loads((out / "keypoints.json").read_text())
    assert [r["frame"] for r in results] == list(range(FRAMES))
    assert [r["image_id"] for r in results] == list(range(1, FRAMES + 1))
    assert {r["file_name"] for r in results} == {"clip.avi"}
    # each frame's keypoints are those of the Python API on that decoded frame and box
    predictor = hgpose.load(checkpoint)
    frames = _decoded_frames(video)
    assert len(frames) == FRAMES
    for result, frame in zip(results, frames):
        expected = predictor.predict(frame, [[4, 10, 60, 56]])[0]
        np.testing.assert_allclose(np.reshape(result["keypoints"], (17, 3)), expected, atol=0.006)
    overlay = _decoded_frames(out / "clip_pose.mp4")
    assert len(overlay) == FRAMES and overlay[0].shape == (HEIGHT, WIDTH, 3)
    # the box is drawn in white on each overlay frame: its left edge, where the video is dark
    assert all(frame[30:50, 4].mean() > 200 for frame in overlay)
    assert not list(out.glob(".*"))  # no temporary file left behind


def test_images_and_a_video_together_get_distinct_image_ids(checkpoint, tmp_path, capsys):
    video = _write_video(tmp_path / "clip.avi", frames=3)
    photo = tmp_path / "photo.jpg"
    assert cv2.imwrite(str(photo), np.full((60, 50, 3), 100, np.uint8))
    out = tmp_path / "out"
    capsys.readouterr()
    code = main(["predict", "--checkpoint", str(checkpoint), "--no-progress", str(video), str(photo), "--out", str(out),
                 "--no-overlays"])
    captured = capsys.readouterr()
    err = captured.err
    assert code == 0, err
    assert f"4 people in 1 images and 3 video frames -> {out / 'keypoints.json'}" in captured.out
    assert "whole image is treated as one person" in err  # and each whole frame
    results = json.loads((out / "keypoints.json").read_text())
    assert [(r["image_id"], r["file_name"], r.get("frame")) for r in results] == [
        (1, "photo.jpg", None), (2, "clip.avi", 0), (3, "clip.avi", 1), (4, "clip.avi", 2)]


def test_bad_videos_and_box_files_for_videos_are_reported(checkpoint, tmp_path, capsys):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    # a process of its own: FFmpeg (inside OpenCV) writes to the process's stderr, and sets its log level once
    done = subprocess.run([sys.executable, "-m", "hgpose", "predict", "--checkpoint", str(checkpoint), str(broken),
                           "--out", str(tmp_path / "out"), "--no-progress"], capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"skipped 1 image(s):\n  {broken}: cannot be opened as a video (OpenCV)" in done.stderr
    assert "moov atom" not in done.stderr  # our line says what is wrong; FFmpeg's own are kept out
    video = _write_video(tmp_path / "clip.avi", frames=2)
    code, err = _predict(capsys, checkpoint, video, "--box", "500,500,20,20", "--out", tmp_path / "out")
    assert code == 1 and "--box [500, 500, 20, 20] lies outside its 96x72 frames" in err
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("clip.avi,1,1,20,20\n")
    code, err = _predict(capsys, checkpoint, video, "--boxes", boxes, "--out", tmp_path / "out")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "not video frames" in err
