"""hgpose.load / Predictor.predict, `hgpose predict` and the skeleton overlays."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import hgpose
from hgpose.cli import main
from hgpose.data.transforms import crop_box_from_bbox
from hgpose.draw import LEFT_COLOUR, RIGHT_COLOUR, draw_pose
from hgpose.model import ModelConfig, build_model, save_model
from hgpose.predict import Predictor

TINY = ModelConfig(depth=2, features=32, input_size=64)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_model(build_model(TINY), tmp_path_factory.mktemp("predict") / "tiny.safetensors")


class BrightnessModel(torch.nn.Module):
    """A stand-in network whose every heatmap is the input's brightness averaged over 4x4 blocks, so
    the predicted keypoint is wherever the image is brightest: it checks the whole coordinate chain."""

    def __init__(self):
        super().__init__()
        self.config = TINY
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        heat = F.avg_pool2d(x.mean(dim=1, keepdim=True), 4)
        return heat.expand(-1, 17, -1, -1) + self.dummy


def test_predict_returns_17_keypoints_per_box_in_image_coordinates():
    image = np.zeros((120, 160, 3), np.uint8)
    # a box whose crop is exactly 64 image pixels (side 1.25 * 51.2) from (48, 28): one input pixel each
    box = [80 - 25.6, 60 - 25.6, 51.2, 51.2]
    np.testing.assert_allclose(crop_box_from_bbox(box), [48, 28, 64])
    image[28 + 36 : 28 + 40, 48 + 20 : 48 + 24] = 255  # image pixels x 68..71, y 64..67 -> heatmap (5, 9)
    predictor = Predictor(BrightnessModel())
    keypoints = predictor.predict(image, boxes=[box, [0, 0, 160, 120]])
    assert keypoints.shape == (2, 17, 3)
    # the spot covers [68, 72) x [64, 68) in image coordinates: its centre is (70, 66)
    np.testing.assert_allclose(keypoints[0, :, :2], np.tile([70.0, 66.0], (17, 1)), atol=1e-6)
    np.testing.assert_allclose(keypoints[0, :, 2], 1.0, atol=1e-6)  # confidence = the heatmap peak
    # the whole-image box finds the same spot, to within a heatmap pixel of the larger crop (200/16 px)
    assert np.all(np.abs(keypoints[1, :, :2] - [70.0, 66.0]) <= 200 / 16)


def test_predict_accepts_paths_grey_images_and_no_boxes(checkpoint, tmp_path):
    predictor = hgpose.load(checkpoint)
    image = np.random.default_rng(0).integers(0, 256, (90, 70, 3), dtype=np.uint8)
    path = tmp_path / "person.png"
    cv2.imwrite(str(path), image[:, :, ::-1])
    from_path = predictor.predict(path)
    assert from_path.shape == (1, 17, 3)
    np.testing.assert_allclose(from_path, predictor.predict(image), atol=1e-5)  # RGB order kept
    assert predictor.predict(image[:, :, 0]).shape == (1, 17, 3)
    assert predictor.predict(image, boxes=np.zeros((0, 4))).shape == (0, 17, 3)
    # without boxes the person is the whole image: keypoints land in its padded crop
    crop = crop_box_from_bbox([0, 0, 70, 90])
    xy = from_path[0, :, :2]
    assert np.all((xy >= crop[:2]) & (xy <= crop[:2] + crop[2]))


def test_predict_many_batches_across_images_with_the_same_result(checkpoint):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (60 + 10 * i, 80, 3), dtype=np.uint8) for i in range(5)]
    one_by_one = [Predictor.from_checkpoint(checkpoint, batch_size=1).predict(im) for im in images]
    batched = Predictor.from_checkpoint(checkpoint, batch_size=3).predict_many((im, None, i) for i, im in
                                                                               enumerate(images))
    for i, (tag, keypoints) in enumerate(batched):
        assert tag == i
        np.testing.assert_allclose(keypoints, one_by_one[i], atol=1e-4)


def test_bad_boxes_are_a_clear_error(checkpoint):
    from hgpose.fileio import UserError

    with pytest.raises(UserError, match="positive w, h"):
        hgpose.load(checkpoint).predict(np.zeros((10, 10, 3), np.uint8), boxes=[[0, 0, 0, 5]])


# --- the command ---------------------------------------------------------------------------------------


def _write_images(folder, count=2):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        cv2.imwrite(str(folder / f"img{i}.jpg"), rng.integers(0, 256, (100, 80, 3), dtype=np.uint8))
    return folder


def test_predict_command_writes_coco_results_and_overlays_and_skips_unreadable_images(checkpoint, tmp_path,
                                                                                       capsys):
    folder = _write_images(tmp_path / "images")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (folder / "empty.png").write_bytes(b"")
    out = tmp_path / "out"
    code = main(["predict", "--checkpoint", str(checkpoint), str(folder), str(tmp_path / "missing.jpg"),
                 "--out", str(out), "--box", "10,10,50,70", "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0
    results = json.loads((out / "keypoints.json").read_text())
    assert [r["image_id"] for r in results] == [3, 4]  # running ids over broken, empty, img0, img1
    assert [r["file_name"] for r in results] == ["img0.jpg", "img1.jpg"]
    for r in results:
        assert r["category_id"] == 1 and len(r["keypoints"]) == 51 and 0 <= r["score"]
    for name in ("img0", "img1"):
        overlay = cv2.imread(str(out / f"{name}_pose.jpg"))
        assert overlay is not None and overlay.shape == (100, 80, 3)
    assert "skipped 3 image(s)" in captured.err
    assert "broken.jpg" in captured.err and "empty.png" in captured.err and "missing.jpg" in captured.err
    assert "Traceback" not in captured.err + captured.out
    assert "2 people in 2 images" in captured.out


def test_predict_command_takes_boxes_and_image_ids_from_a_coco_file(checkpoint, synth_dataset, tmp_path):
    annotations = synth_dataset / "annotations" / "person_keypoints_val2017.json"
    data = json.loads(annotations.read_text())
    first = data["images"][0]
    out = tmp_path / "out"
    image = synth_dataset / "val2017" / first["file_name"]
    code = main(["predict", "--checkpoint", str(checkpoint), str(image), "--boxes", str(annotations),
                 "--out", str(out), "--no-overlays"])
    assert code == 0
    results = json.loads((out / "keypoints.json").read_text())
    people = [a for a in data["annotations"] if a["image_id"] == first["id"] and not a.get("iscrowd")]
    assert len(results) == len(people) > 0
    assert {r["image_id"] for r in results} == {first["id"]}
    assert not list(out.glob("*_pose.jpg"))


def test_predict_command_with_only_unreadable_images_fails_without_a_traceback(checkpoint, tmp_path, capsys):
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    code = main(["predict", "--checkpoint", str(checkpoint), str(tmp_path / "bad.jpg"),
                 "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 1 and "bad.jpg" in captured.err and "Traceback" not in captured.err


def test_predict_command_rejects_a_malformed_box(checkpoint, tmp_path, capsys):
    code = main(["predict", "--checkpoint", str(checkpoint), str(tmp_path), "--box", "1,2,3"])
    assert code == 2 and "--box" in capsys.readouterr().err


# --- overlays ------------------------------------------------------------------------------------------


def _person(left_y: float, right_y: float, confidence: float = 0.9) -> np.ndarray:
    """17 keypoints: the left arm (shoulder 5, elbow 7, wrist 9) along y = left_y, the right arm along
    y = right_y, everything else hidden (confidence 0)."""
    keypoints = np.zeros((17, 3))
    for k, x in ((5, 20), (7, 60), (9, 100)):
        keypoints[k] = (x, left_y, confidence)
    for k, x in ((6, 20), (8, 60), (10, 100)):
        keypoints[k] = (x, right_y, confidence)
    return keypoints


def test_overlay_draws_left_and_right_limbs_in_distinct_colours():
    drawn = draw_pose(np.zeros((80, 120, 3), np.uint8), _person(20.5, 60.5)[None], thickness=3)
    left, right = drawn[20, 40].astype(int), drawn[60, 40].astype(int)  # mid upper arms
    assert np.abs(left - np.array(LEFT_COLOUR) * 0.935).max() < 20, left  # opacity 0.35 + 0.65 * 0.9
    assert np.abs(right - np.array(RIGHT_COLOUR) * 0.935).max() < 20, right
    assert drawn[40, 40].max() == 0  # nothing between the arms


def test_overlay_hides_keypoints_below_min_confidence_and_dims_doubtful_ones():
    person = _person(20.5, 60.5)
    person[9, 2] = 0.1  # left wrist: below the threshold
    person[10, 2] = 0.3  # right wrist: shown, dimmed
    drawn = draw_pose(np.zeros((80, 120, 3), np.uint8), person, min_confidence=0.2, thickness=3)
    assert drawn[20, 100].max() == 0 and drawn[20, 80].max() == 0  # no wrist, no forearm to it
    assert 0 < drawn[60, 100].max() < drawn[60, 20].max()
