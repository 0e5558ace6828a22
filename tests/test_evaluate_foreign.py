"""`evaluate` on COCO-format files from other sources, and predict and evaluate cropping alike."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from hgpose.cli import main
from hgpose.data.coco import load_split
from hgpose.evaluation.coco import add_coco_stats, coco_keypoint_stats, coco_results
from hgpose.keypoints import KEYPOINT_NAMES
from hgpose.model.hourglass import ModelConfig, build_model
from hgpose.model.weights import save_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import torch

    torch.manual_seed(0)
    return save_model(build_model(ModelConfig(depth=2, features=16, input_size=64)),
                      tmp_path_factory.mktemp("foreign") / "tiny.safetensors")


def _perfect_results(index) -> list[dict]:
    """The ground truth keypoints of every kept person, as a results file would hold them."""
    return coco_results(index.image_ids, index.keypoints[..., :2], np.ones(index.keypoints.shape[:2]),
                        index.category_id)


def test_a_perfect_prediction_scores_ap_1_when_hgpose_drops_a_person(tiny_coco):
    image = tiny_coco.add_image()
    tiny_coco.add_person(image, bbox=(10.0, 10.0, 50.0, 90.0))
    tiny_coco.add_person(image, bbox=(90.0, 10.0, 50.0, 90.0))
    # a degenerate box (zero width) with labelled keypoints: hgpose drops it, COCOeval would count it
    tiny_coco.add_person(image, bbox=(70.0, 10.0, 0.0, 90.0), keypoints=[70.0, 50.0, 2] * 17)
    for _ in range(5):
        tiny_coco.add_person(tiny_coco.add_image())
    index = load_split(tiny_coco.write(), "train2017")
    assert len(index) == 7 and index.drops["bad bbox"] == 1
    results = _perfect_results(index)
    # scored against the file as it stands, the dropped person is a miss
    assert coco_keypoint_stats(tiny_coco.annotation_file(), results, index.image_ids)["AR"] < 1
    scored = {"coco_results": results}
    add_coco_stats(scored, index, index.image_ids)
    assert scored["coco"]["AP"] == pytest.approx(1.0) and scored["coco"]["AR"] == pytest.approx(1.0)


def test_annotations_without_area_or_iscrowd_and_another_category_id(tiny_coco):
    for _ in range(4):
        tiny_coco.add_person(tiny_coco.add_image(), category_id=7)
    for ann in tiny_coco.annotations:
        del ann["area"], ann["iscrowd"], ann["num_keypoints"]
    category = {"id": 7, "name": "person", "keypoints": list(KEYPOINT_NAMES)}
    index = load_split(tiny_coco.write(categories=[{"id": 1, "name": "dog"}, category]), "train2017")
    assert index.category_id == 7 and len(index) == 4
    scored = {"coco_results": _perfect_results(index)}
    assert {r["category_id"] for r in scored["coco_results"]} == {7}
    add_coco_stats(scored, index, index.image_ids)
    assert scored["coco"]["AP"] == pytest.approx(1.0)


def test_keypoint_names_other_than_cocos_are_refused(capsys, tiny_coco, tmp_path):
    tiny_coco.add_person(tiny_coco.add_image())
    names = list(KEYPOINT_NAMES)
    names[3], names[4] = names[4], names[3]  # e.g. a set with left and right swapped
    root = tiny_coco.write(categories=[{"id": 1, "name": "person", "keypoints": names}])
    capsys.readouterr()
    code = main(["prepare", "--data", str(root), "--splits", "train2017", "--cache-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.endswith("the person category's keypoints are not COCO's: keypoint 4 (counting from 1) is 'right_ear', "
                        "COCO's is 'left_ear'; hgpose trains COCO's keypoint set only")


def _evaluate(checkpoint, root, out, capsys):
    capsys.readouterr()
    code = main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(root), "--split", "val2017",
                 "--out", str(out), "--device", "cpu", "--precision", "fp32", "--workers", "0", "--no-progress",
                 "--cache", "off"])
    return code, capsys.readouterr()


def test_evaluate_a_foreign_file_names_unreadable_images_and_uses_its_category(checkpoint, tiny_coco, tmp_path,
                                                                              capsys):
    for _ in range(6):
        tiny_coco.add_person(tiny_coco.add_image(), category_id=3)
    missing = tiny_coco.add_image(write=False)
    tiny_coco.add_person(missing, category_id=3)
    for ann in tiny_coco.annotations:
        del ann["area"], ann["iscrowd"]
    root = tiny_coco.write("val2017", categories=[{"id": 3, "name": "person"}])
    code, captured = _evaluate(checkpoint, root, tmp_path / "metrics.json", capsys)
    assert code == 0, captured.err
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["coco"]["AP"] is not None and metrics["skipped"] == 1
    assert metrics["unreadable"] == {"images": 1, "first": [{"file_name": f"{missing:012d}.jpg",
                                                             "problem": "missing file"}]}
    assert (f"1 unreadable images skipped (1 instances), COCO AP covers the readable ones: "
            f"{missing:012d}.jpg (missing file)") in captured.out
    results = json.loads((tmp_path / "metrics_keypoints.json").read_text())
    assert len(results) == 6 and {r["category_id"] for r in results} == {3}


def test_a_cocoeval_failure_keeps_the_pck_already_written(checkpoint, tiny_coco, tmp_path, capsys):
    for _ in range(3):
        tiny_coco.add_person(tiny_coco.add_image())
    # a crowd region given by its segmentation only: hgpose skips crowds, COCOeval reads their keypoints
    tiny_coco.annotations.append({"id": 99, "image_id": 1, "category_id": 1, "iscrowd": 1,
                                  "segmentation": {"counts": [0, 10], "size": [120, 160]}})
    root = tiny_coco.write("val2017")
    code, captured = _evaluate(checkpoint, root, tmp_path / "metrics.json", capsys)
    assert code == 2
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "COCO AP not computed (a ground-truth annotation has no 'keypoints')" in err
    assert "PCK" in captured.out  # the figures were printed ...
    metrics = json.loads((tmp_path / "metrics.json").read_text())  # ... and written
    assert metrics["pck"]["all"]["counted"] > 0 and metrics["coco"] is None
    assert json.loads((tmp_path / "metrics_keypoints.json").read_text())


@pytest.mark.slow
def test_predict_and_evaluate_give_identical_keypoints_for_a_large_person(checkpoint, tiny_coco, tmp_path,
                                                                          capsys):
    """A person far larger than the input: training and evaluate decode the JPEG at 1/8 size; predict
    must crop the very same pixels, so its keypoints equal evaluate's to the last digit."""
    from hgpose.data.images import crop_file
    from hgpose.data.transforms import crop_box_from_bbox, crop_image

    yy, xx = np.mgrid[0:900, 0:700]
    pixels = np.stack([(xx * 255 // 700), (yy * 255 // 900), ((xx + yy) % 256)], axis=-1).astype(np.uint8)
    pixels = cv2.GaussianBlur(pixels + np.random.default_rng(0).integers(0, 60, pixels.shape, dtype=np.uint8),
                              (0, 0), 3)
    image = tiny_coco.add_image(width=700, height=900, pixels=pixels)
    bbox = (80.0, 60.0, 450.0, 760.0)  # crop side 950 px: far over 410
    tiny_coco.add_person(image, bbox=bbox)
    root = tiny_coco.write("val2017")
    path = root / "val2017" / tiny_coco.images[0]["file_name"]

    # the crops do differ between reduced and full-size decoding: the test can fail
    box = crop_box_from_bbox(np.array(bbox))
    reduced = crop_file(path, box[None], 64, (700, 900)).crops[0]
    full = crop_image(cv2.imread(str(path))[:, :, ::-1], box, 64).transpose(2, 0, 1)
    assert np.abs(reduced.astype(int) - full).max() > 10

    code, captured = _evaluate(checkpoint, root, tmp_path / "metrics.json", capsys)
    assert code == 0, captured.err
    evaluated = json.loads((tmp_path / "metrics_keypoints.json").read_text())
    code = main(["predict", "--checkpoint", str(checkpoint), str(path), "--boxes", str(tiny_coco.annotation_file(
        "val2017")), "--out", str(tmp_path / "predicted"), "--device", "cpu", "--no-overlays", "--precision", "fp32"])
    assert code == 0
    predicted = json.loads((tmp_path / "predicted" / "keypoints.json").read_text())
    assert len(evaluated) == len(predicted) == 1
    assert predicted[0]["image_id"] == evaluated[0]["image_id"]
    assert predicted[0]["keypoints"] == evaluated[0]["keypoints"]
    # the mean confidence unrounded: equal up to float32 arithmetic (evaluate runs channels-last)
    assert predicted[0]["score"] == pytest.approx(evaluated[0]["score"], rel=1e-5)


def test_predict_flip_test_and_dark_decoding_match_evaluate(checkpoint, tiny_coco, tmp_path, capsys):
    """predict --flip-test --decode dark runs exactly what evaluate does with the same flags, and the
    flags change the keypoints (so the comparison can fail)."""
    image = tiny_coco.add_image()
    tiny_coco.add_person(image, bbox=(30.0, 10.0, 60.0, 100.0))
    root = tiny_coco.write("val2017")
    path = root / "val2017" / tiny_coco.images[0]["file_name"]
    boxes = str(tiny_coco.annotation_file("val2017"))
    flags = ["--flip-test", "--decode", "dark"]

    def predict(out, extra):
        code = main(["predict", "--checkpoint", str(checkpoint), str(path), "--boxes", boxes, "--out",
                     str(tmp_path / out), "--device", "cpu", "--no-overlays", "--precision", "fp32", *extra])
        assert code == 0
        return json.loads((tmp_path / out / "keypoints.json").read_text())[0]["keypoints"]

    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(root), "--split", "val2017",
                 "--out", str(tmp_path / "metrics.json"), "--device", "cpu", "--precision", "fp32", *flags]) == 0
    evaluated = json.loads((tmp_path / "metrics_keypoints.json").read_text())[0]["keypoints"]
    assert predict("flipped", flags) == evaluated
    assert predict("plain", []) != evaluated
