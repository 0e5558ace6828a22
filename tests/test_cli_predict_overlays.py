"""Prediction overlays people can read: size-aware strokes, each person's box labelled with its index in
keypoints.json and its score, a one-line note when no boxes are given, and CSV box files."""

import json

import cv2
import numpy as np
import pytest

from hgpose.cli import main
from hgpose.data.person_boxes import load_boxes_csv
from hgpose.draw import LEFT_COLOUR, draw_pose
from hgpose.model.hourglass import ModelConfig, build_model
from hgpose.model.weights import save_model
from hgpose.runtime.files import UserError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = build_model(ModelConfig(depth=2, features=32, input_size=64))
    return save_model(model, tmp_path_factory.mktemp("overlays") / "tiny.safetensors")


def _standing_person(x: float, y: float, height: float) -> np.ndarray:
    """17 keypoints (x, y, confidence 0.9) of a person `height` pixels tall whose left upper arm
    (shoulder 5 -> elbow 7) is horizontal."""
    unit = height / 10
    points = np.zeros((17, 3))
    points[:, 2] = 0.9
    layout = {0: (0, 0), 1: (-0.3, -0.2), 2: (0.3, -0.2), 3: (-0.6, 0), 4: (0.6, 0), 5: (-1, 2), 6: (1, 2),
              7: (-3, 2), 8: (3, 2), 9: (-4, 2), 10: (4, 2), 11: (-0.8, 5), 12: (0.8, 5), 13: (-0.8, 7.5),
              14: (0.8, 7.5), 15: (-0.8, 10), 16: (0.8, 10)}
    for k, (dx, dy) in layout.items():
        points[k, :2] = (x + dx * unit, y + dy * unit)
    return points


def _stroke_width(image: np.ndarray, column: int) -> float:
    """The width in pixels of a horizontal stroke of LEFT_COLOUR (at opacity 0.935, confidence 0.9)
    crossing `column` on a black image, anti-aliased edges counted by their coverage."""
    return float(image[:, column, 0].astype(int).sum() / (LEFT_COLOUR[0] * 0.935))


def test_line_width_and_points_scale_with_the_person():
    small_person = _standing_person(60, 10, 100)
    big_person = _standing_person(2000, 100, 1000)  # ten times taller, on a 12 MP photo
    small = draw_pose(np.zeros((120, 120, 3), np.uint8), small_person)
    big = draw_pose(np.zeros((3000, 4000, 3), np.uint8), big_person)
    small_width = _stroke_width(small, 40)  # mid left upper arm: x = 60 - 2 * 10
    big_width = _stroke_width(big, 1800)
    assert 1 <= small_width <= 2.5
    assert 8 <= big_width <= 14 and big_width >= 5 * small_width
    # and the keypoint discs: the left elbow's disc, measured through its centre
    assert _stroke_width(big, 1700) > 5 * _stroke_width(small, 30)


def test_each_person_gets_its_box_and_a_label_and_the_rest_of_the_image_is_untouched():
    image = np.full((300, 400, 3), 128, np.uint8)
    people = np.stack([_standing_person(100, 80, 150), _standing_person(300, 80, 150)])
    boxes = [[40, 70, 120, 170], [240, 70, 120, 170]]
    drawn = draw_pose(image, people, boxes=boxes, labels=["#0 0.90", "#1 0.90"])
    for x, y, _w, h in boxes:
        assert (drawn[y + h // 2, x] > 200).all()  # the box's left edge, white
        label = drawn[max(0, y - 25) : y - 2, x : x + 60]
        assert (label < 40).all(axis=2).sum() > 100 and (label > 200).all(axis=2).sum() > 20  # text on a patch
    assert (drawn[250:, :] == 128).all()  # below every box and label: not a pixel changed


def test_overlay_labels_follow_the_order_of_keypoints_json(checkpoint, tmp_path):
    photo = tmp_path / "photos" / "two.jpg"
    photo.parent.mkdir()
    gradient = np.linspace(60, 190, 320, dtype=np.uint8)[None, :, None].repeat(240, axis=0).repeat(3, axis=2)
    assert cv2.imwrite(str(photo), gradient)
    boxes_csv = tmp_path / "boxes.csv"
    boxes_csv.write_text("file_name,x,y,w,h,score\ntwo.jpg,20,30,100,180,0.99\ntwo.jpg,180,40,110,170,0.8\n")
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(checkpoint), str(photo), "--boxes", str(boxes_csv),
                 "--out", str(out), "--min-confidence", "1", "--device", "cpu"]) == 0  # boxes and labels only
    results = json.loads((out / "keypoints.json").read_text())
    assert [r["image_id"] for r in results] == [1, 1]
    overlay = cv2.imread(str(out / "two_pose.jpg"))[:, :, ::-1].astype(int)
    image = cv2.imread(str(photo))[:, :, ::-1]
    keypoints = np.array([r["keypoints"] for r in results]).reshape(2, 17, 3)
    boxes = [[20, 30, 100, 180], [180, 40, 110, 170]]
    labels = slice(0, 40), slice(0, 320)  # the strip above the boxes where the labels go

    def difference(texts):
        expected = draw_pose(image, keypoints, 1, boxes=boxes, labels=texts).astype(int)
        return np.abs(expected[labels] - overlay[labels]).mean()

    in_order = [f"#{i} {r['score']:.2f}" for i, r in enumerate(results)]
    swapped = [f"#{1 - i} {r['score']:.2f}" for i, r in enumerate(results)]
    assert difference(in_order) < 0.5 * difference(swapped)  # JPEG noise vs. wrongly numbered labels


def _predict(capsys, checkpoint, tmp_path, *extra) -> str:
    photo = tmp_path / "one.jpg"
    assert cv2.imwrite(str(photo), np.full((120, 160, 3), 90, np.uint8))
    assert main(["predict", "--checkpoint", str(checkpoint), str(photo), "--out", str(tmp_path / "out"),
                 "--no-overlays", "--device", "cpu", *extra]) == 0
    return capsys.readouterr().err


def test_without_boxes_one_line_says_the_whole_image_is_one_person(checkpoint, tmp_path, capsys):
    notes = [line for line in _predict(capsys, checkpoint, tmp_path).splitlines() if "person boxes" in line]
    assert len(notes) == 1
    assert "whole image is treated as one person" in notes[0] and "--boxes FILE" in notes[0] and "--box" in notes[0]
    assert "person boxes" not in _predict(capsys, checkpoint, tmp_path, "--box", "10,10,50,90")


def test_csv_box_files(tmp_path, capsys):
    path = tmp_path / "boxes.csv"
    path.write_text("# detector output\nfile_name,x,y,w,h\nb.jpg,1,2,30,40\na.jpg,5,6,7,8\n"
                    "b.jpg, 10.5, 20, 30, 40, 0.7\nb.jpg,0,0,0,10\nb.jpg,0,0,nan,10\n")
    boxes = load_boxes_csv(path)
    assert list(boxes) == ["b.jpg", "a.jpg"]
    assert boxes["b.jpg"][0] == 1 and boxes["b.jpg"][1].tolist() == [[1, 2, 30, 40], [10.5, 20, 30, 40]]
    assert boxes["a.jpg"][0] == 2 and boxes["a.jpg"][1].tolist() == [[5, 6, 7, 8]]
    assert "skipped 2 box(es) without a positive finite size (line 6, 7)" in capsys.readouterr().err
    for text, problem in (("a.jpg,1,2,3\n", r"line 1: expected file_name,x,y,w,h\[,score\]"),
                          ("a.jpg,1,2,3,four\n", "line 1: not a number"),
                          ("file_name,x,y,w,h\n", "no boxes"),
                          ("a.jpg,1,2,3,4,5,6\n", "line 1: expected")):
        path.write_text(text)
        with pytest.raises(UserError, match=problem):
            load_boxes_csv(path)
    with pytest.raises(UserError, match="boxes file not found"):
        load_boxes_csv(tmp_path / "missing.csv")
