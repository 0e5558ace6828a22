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
from hgpose.model.hourglass import ModelConfig, build_model
from hgpose.model.weights import save_model
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
    from hgpose.runtime.files import UserError

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


# --- real photos and files from other datasets ------------------------------------------------------------


def _spot_jpeg(path, orientation: int | None = None):
    """A 160x120 (stored) black JPEG with a white 8x8 spot at stored pixels x 100..107, y 20..27,
    optionally tagged with an EXIF orientation."""
    from PIL import Image

    pixels = np.zeros((120, 160, 3), np.uint8)
    pixels[20:28, 100:108] = 255
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, "JPEG", quality=95, exif=exif.tobytes())
    return path


def test_a_photo_is_predicted_upright_by_its_exif_orientation(tmp_path):
    path = _spot_jpeg(tmp_path / "phone.jpg", orientation=6)  # viewers turn it 90 degrees clockwise
    predictor = Predictor(BrightnessModel())
    upright = predictor.predict(path)  # the whole upright photo (120 wide, 160 tall) is the person
    # the spot's centre (104, 24) as stored is at (120 - 24, 104) upright; within a heatmap pixel (200/16)
    assert np.all(np.abs(upright[0, :, :2] - [96.0, 104.0]) <= 200 / 16)
    stored = predictor.predict(path, upright=False)
    assert np.all(np.abs(stored[0, :, :2] - [104.0, 24.0]) <= 200 / 16)


def test_predict_command_applies_exif_orientation_but_not_with_coco_boxes(checkpoint, tmp_path):
    (tmp_path / "images").mkdir()
    path = _spot_jpeg(tmp_path / "images" / "photo.jpg", orientation=6)
    assert main(["predict", "--checkpoint", str(checkpoint), str(path), "--out", str(tmp_path / "a")]) == 0
    assert cv2.imread(str(tmp_path / "a" / "photo_pose.jpg")).shape == (160, 120, 3)  # upright
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"images": [{"id": 5, "file_name": "photo.jpg", "width": 160, "height": 120}],
                                 "annotations": [{"id": 1, "image_id": 5, "category_id": 1, "bbox": [90, 10, 30, 30]}],
                                 "categories": [{"id": 1, "name": "person"}]}))
    assert main(["predict", "--checkpoint", str(checkpoint), str(path), "--boxes", str(boxes),
                 "--out", str(tmp_path / "b")]) == 0
    assert cv2.imread(str(tmp_path / "b" / "photo_pose.jpg")).shape == (120, 160, 3)  # as stored
    result = json.loads((tmp_path / "b" / "keypoints.json").read_text())
    assert [r["image_id"] for r in result] == [5]


def _sequences(tmp_path, names, category_id=1, boxes=None):
    """Images under tmp_path/root at `names` (folders reuse base names) and a COCO file listing them."""
    root = tmp_path / "root"
    images, annotations = [], []
    for i, name in enumerate(names, start=1):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / name), np.random.default_rng(i).integers(0, 256, (100, 80, 3), dtype=np.uint8))
        images.append({"id": 100 + i, "file_name": name, "width": 80, "height": 100})
        for j, bbox in enumerate((boxes or {}).get(name, [[10, 10, 50, 70]])):
            annotations.append({"id": 1000 + 10 * i + j, "image_id": 100 + i, "category_id": category_id,
                                "bbox": bbox, "iscrowd": 0})
    file = tmp_path / "boxes.json"
    file.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": category_id, "name": "person"}]}))
    return root, file


def test_boxes_match_images_by_their_path_under_the_image_root(checkpoint, tmp_path):
    root, boxes = _sequences(tmp_path, ["seqA/000000.jpg", "seqB/000000.jpg", "seqB/000001.jpg"], category_id=4)
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(checkpoint), str(root), "--boxes", str(boxes), "--out", str(out),
                 "--no-overlays"]) == 0
    results = json.loads((out / "keypoints.json").read_text())
    assert [(r["image_id"], r["file_name"]) for r in results] == [
        (101, "seqA/000000.jpg"), (102, "seqB/000000.jpg"), (103, "seqB/000001.jpg")]
    assert {r["category_id"] for r in results} == {4}  # the file's own person category
    # one file, matched by the tail of its path, not its base name
    assert main(["predict", "--checkpoint", str(checkpoint), str(root / "seqB" / "000000.jpg"), "--boxes",
                 str(boxes), "--out", str(out), "--no-overlays"]) == 0
    assert [r["image_id"] for r in json.loads((out / "keypoints.json").read_text())] == [102]


def test_an_ambiguous_boxes_match_is_an_error(checkpoint, tmp_path, capsys):
    root, boxes = _sequences(tmp_path, ["000000.jpg", "seqA/000000.jpg"])
    capsys.readouterr()
    code = main(["predict", "--checkpoint", str(checkpoint), str(root / "seqA" / "000000.jpg"), "--boxes",
                 str(boxes), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "matches several images of" in err and "'000000.jpg', 'seqA/000000.jpg'" in err


def test_a_degenerate_box_skips_that_person_only(checkpoint, tmp_path, capsys):
    root, boxes = _sequences(tmp_path, ["a.jpg", "b.jpg"], boxes={
        "a.jpg": [[10, 10, 50, 70], [30, 20, 0, 40], [10, 10, 50, float("nan")], [500, 500, 20, 20]]})
    capsys.readouterr()
    code = main(["predict", "--checkpoint", str(checkpoint), str(root), "--boxes", str(boxes),
                 "--out", str(tmp_path / "out"), "--no-overlays"])
    captured = capsys.readouterr()
    assert code == 0 and "Traceback" not in captured.err
    results = json.loads((tmp_path / "out" / "keypoints.json").read_text())
    assert [r["image_id"] for r in results] == [101, 102]
    assert "image id 101, annotation 1011: degenerate box [30, 20, 0, 40], person skipped" in captured.err
    assert "image id 101, annotation 1012: degenerate box [10, 10, 50, nan], person skipped" in captured.err
    assert "image id 101, annotation 1013: box outside the image [500, 500, 20, 20], person skipped" in captured.err
    assert "skipped 3 person box(es)" in captured.err
