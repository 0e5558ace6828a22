"""Unusable images and images a pixel off their annotated size are counted over the whole dataset,
before a run: from every header without a prepared cache, from prepare's meta.json with one."""

from __future__ import annotations

import shutil
import struct

import cv2
import numpy as np
import pytest

from hgpose.data.cache import read_cache_meta
from hgpose.data.coco import load_split
from hgpose.data.dataset import PersonDataset
from hgpose.data.image_report import image_report
from hgpose.data.images import HEADER_BYTES, check_image_header
from hgpose.data.prepare import prepare_cache
from hgpose.train.loop import train
from test_train import quick_config


def _texture(height=120, width=160, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _jpeg(pixels: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


def _with_big_app_segments(jpeg: bytes, segments: int = 2, size: int = 40_000) -> bytes:
    """The same JPEG with `segments` application segments before its frame header (as big EXIF and
    maker notes put there), so its size lies beyond the first HEADER_BYTES."""
    filler = b"".join(b"\xff\xe2" + struct.pack(">H", size + 2) + b"\0" * size for _ in range(segments))
    return jpeg[:2] + filler + jpeg[2:]


@pytest.fixture
def awkward_split(tiny_coco):
    """train2017 with 8 good images (one person each) and: a missing file (2 people), one a pixel
    narrower than its JSON says (2 people, both fit), one a pixel narrower where a keypoint reaches
    into the missing column, one truncated JPEG, one whose size comes after 80 KB of APP segments."""
    for _ in range(8):
        tiny_coco.add_person(tiny_coco.add_image())
    missing = tiny_coco.add_image(write=False)
    narrow = tiny_coco.add_image(width=161, pixels=_texture(120, 160, seed=1))
    reaching = tiny_coco.add_image(width=161, pixels=_texture(120, 160, seed=2))
    truncated, padded = tiny_coco.add_image(), tiny_coco.add_image()
    for image in (missing, missing, narrow, narrow, truncated, padded):
        tiny_coco.add_person(image)
    keypoints = [40.0, 30.0, 2] * 16 + [160.5, 60.0, 2]  # x 160.5 exists only in the JSON's 161 columns
    tiny_coco.add_person(reaching, bbox=(40.0, 20.0, 40.0, 80.0), keypoints=keypoints)
    root = tiny_coco.write()
    names = {image["id"]: root / "train2017" / image["file_name"] for image in tiny_coco.images}
    names[truncated].write_bytes(names[truncated].read_bytes()[:-3000])
    names[padded].write_bytes(_with_big_app_segments(names[padded].read_bytes()))
    return root, {key: names[image].name for key, image in
                  (("missing", missing), ("narrow", narrow), ("reaching", reaching), ("truncated", truncated),
                   ("padded", padded))}


def test_a_header_beyond_the_first_bytes_is_still_read(tmp_path):
    path = tmp_path / "padded.jpg"
    path.write_bytes(_with_big_app_segments(_jpeg(_texture())))
    assert path.stat().st_size > HEADER_BYTES
    assert check_image_header(path, (160, 120)) == (None, None)
    assert check_image_header(path, (170, 120))[0] == "image is 160x120, annotation says 170x120"


def test_the_header_report_counts_every_image_of_the_split(awkward_split):
    root, names = awkward_split
    report = image_report(PersonDataset(load_split(root, "train2017"), 64, cache="off"), progress=False)
    assert report.problems == {names["missing"]: "missing file",
                               names["reaching"]: "image is 160x120, annotation says 161x120"}
    assert report.warnings == {names["narrow"]: "image is 160x120, annotation says 161x120 (used as decoded)"}
    assert (report.bad_samples, report.warned_samples) == (3, 2)
    lines = report.lines("training")
    assert lines[0].startswith("3 training samples in 2 unusable images skipped (found in the image headers)")
    assert lines[1].startswith("2 training samples in 1 images a pixel off their annotated size, used as decoded")
    # a body that does not decode is not visible in its header: reading it finds it (and says so)
    assert names["truncated"] not in report.problems


def test_prepare_lists_the_same_images_and_the_dataset_reports_them_from_the_cache(awkward_split):
    root, names = awkward_split
    index = load_split(root, "train2017")
    cache = prepare_cache(root / "annotations" / "person_keypoints_train2017.json", root / "train2017", 64,
                          progress=False, workers=1, index=index)
    meta = read_cache_meta(cache)
    assert {e["file_name"]: e["instances"] for e in meta["size_warnings"]} == {names["narrow"]: 2}
    unreadable = {e["file_name"]: e["problem"] for e in meta["unreadable"]}
    assert set(unreadable) == {names["missing"], names["reaching"], names["truncated"]}  # decoded: truncated too
    report = image_report(PersonDataset(index, 64, cache="auto"), progress=False)
    assert report.source == "prepared cache"
    assert report.problems == unreadable and set(report.warnings) == {names["narrow"]}
    assert (report.bad_samples, report.warned_samples) == (4, 2)
    # a subset counts only its own samples
    narrow_rows = [i for i, image in enumerate(index.image_index) if index.file_names[image] == names["narrow"]]
    subset = image_report(PersonDataset(index.subset(narrow_rows[:1]), 64, cache="auto"), progress=False)
    assert (subset.bad_samples, subset.warned_samples, subset.problems) == (0, 1, {})


def test_training_reports_them_at_the_start_and_the_undecodable_after_its_first_epoch(awkward_split, tmp_path):
    root, names = awkward_split
    shutil.copy(root / "annotations" / "person_keypoints_train2017.json",
                root / "annotations" / "person_keypoints_val2017.json")
    shutil.copytree(root / "train2017", root / "val2017")
    run_dir = train(quick_config(root, tmp_path / "run", epochs=1, val_split="val2017"))
    log = (run_dir / "train.log").read_text().splitlines()
    first_epoch = next(i for i, li in enumerate(log) if li.startswith("epoch"))
    start = log[:first_epoch]
    for what in ("training", "validation"):
        assert any(li.startswith(f"3 {what} samples in 2 unusable images") and names["missing"] in li for li in start)
        assert any(li.startswith(f"2 {what} samples in 1 images a pixel off") and names["narrow"] in li
                   for li in start)
    decoded = [li for li in log if "failed to decode" in li]  # found by reading, once, not the missing ones
    assert len(decoded) == 1 and decoded[0].startswith("1 training samples skipped in epoch 1")
    assert names["truncated"] in decoded[0] and "truncated JPEG" in decoded[0] and names["missing"] not in decoded[0]
    assert log.index(decoded[0]) > next(i for i, li in enumerate(log) if li.startswith("training "))


def test_evaluate_counts_them_over_the_whole_split(awkward_split, tmp_path):
    from hgpose.evaluate import evaluate_checkpoint, format_evaluation
    from hgpose.model.hourglass import build_model
    from hgpose.model.weights import save_model
    from test_train import TINY

    root, names = awkward_split
    checkpoint = save_model(build_model(TINY), tmp_path / "model.safetensors")
    result = evaluate_checkpoint(checkpoint, root, split="train2017", device="cpu", progress=False, cache="off")
    assert result["size_warnings"]["images"] == 1 and result["size_warnings"]["instances"] == 2
    assert result["size_warnings"]["first"][0]["file_name"] == names["narrow"]
    assert "1 images a pixel off their annotated size, used as decoded (2 instances)" in format_evaluation(result)
    assert result["skipped"] == 4  # missing (2), reaching, truncated: unusable, not warned


def test_explore_names_the_chosen_samples_a_pixel_off(awkward_split, capsys):
    from hgpose.explore.report import load_samples

    root, names = awkward_split
    loaded = load_samples(root, "train2017", 64, samples=0)
    err = capsys.readouterr().err
    assert f"2 explored samples in 1 images a pixel off their annotated size, used as decoded, e.g. {names['narrow']}" \
        in err
    assert loaded.unreadable == 4
