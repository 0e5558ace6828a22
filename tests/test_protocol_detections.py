"""Detected boxes: reading COCO detection results, cropping them as ground-truth boxes, the top-down
protocol end to end (rescoring, OKS-NMS, COCOeval), `evaluate --boxes` and `predict --boxes`."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from hgpose.cli import main
from hgpose.data.coco import load_split
from hgpose.data.dataset import PersonDataset
from hgpose.data.person_boxes import demo_detections, detection_index, read_detections, write_jittered_detections
from hgpose.data.transforms import image_to_frame
from hgpose.evaluation.coco import coco_ground_truth
from hgpose.evaluation.topdown import evaluate_detected_boxes
from hgpose.model.heatmaps import render_heatmaps
from hgpose.model.hourglass import ModelConfig, build_model
from hgpose.model.weights import save_model
from hgpose.runtime.files import UserError

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TINY = ModelConfig(depth=2, features=16, input_size=64)


def det(image_id, bbox, score, category_id=1):
    return {"image_id": image_id, "category_id": category_id, "bbox": list(bbox), "score": score}


def test_read_detections_filters_and_counts(tmp_path):
    path = tmp_path / "dets.json"
    path.write_text(json.dumps([det(1, [0, 0, 10, 20], 0.9), det(1, [0, 0, 10, 20], 0.9, category_id=3),
                                det(2, [5, 5, 10, 10], 0.05), det(2, [5, 5, 0, 10], 0.8),
                                det(2, [5, 5, float("nan"), 10], 0.8) | {"bbox": [5, 5, 1e400, 10]}]))
    detections = read_detections(path, min_score=0.1)
    assert detections.image_ids.tolist() == [1] and detections.scores.tolist() == [0.9]
    assert detections.total == 5
    assert detections.skipped["not person"] == 1 and detections.skipped["below --min-box-score"] == 1
    assert detections.skipped["bad bbox"] == 2
    assert detections.label() == f"detected boxes: {path}"
    assert len(read_detections(path)) == 2  # the default keeps every score (the low one too)


@pytest.mark.parametrize("content, message", [
    ('{"images": []}', "expected a COCO detection results list"),
    ('[{"image_id": 1, "bbox": [0, 0, 1, 1]}]', "detection #0 has no 'score'"),
    ('[{"image_id": 1, "bbox": [0, 0, 1], "score": 1}]', "'bbox' is not a list of 4 numbers"),
    ('[{"image_id": "a", "bbox": [0, 0, 1, 1], "score": 1}]', "'image_id' is not an integer"),
    ("[1, 2", "malformed JSON"),
])
def test_bad_detection_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "dets.json"
    path.write_text(content)
    with pytest.raises(UserError, match=message) as error:
        read_detections(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_detected_boxes_are_cropped_as_ground_truth_boxes(tiny_coco, tmp_path):
    image = tiny_coco.add_image(160, 120)
    tiny_coco.add_person(image, bbox=(40.0, 20.0, 40.0, 80.0))
    tiny_coco.add_person(image, bbox=(120.0, 30.0, 60.0, 50.0))  # runs off the right edge: clipped
    root = tiny_coco.write("val2017")
    gt = load_split(root, "val2017")
    path = tmp_path / "dets.json"
    path.write_text(json.dumps([det(image, [40.0, 20.0, 40.0, 80.0], 0.9), det(image, [120.0, 30.0, 60.0, 50.0], 0.8),
                                det(99, [0, 0, 10, 10], 0.9), det(image, [500, 500, 10, 10], 0.9)]))
    detections = read_detections(path)
    index, positions, image_ids = detection_index(detections, tiny_coco.annotation_file("val2017"), root / "val2017",
                                                  "val2017")
    assert positions.tolist() == [0, 1] and image_ids.tolist() == [image]
    assert detections.skipped["unknown image id"] == 1 and detections.skipped["bad bbox"] == 1
    det_data = PersonDataset(index, input_size=64, cache="off")
    gt_data = PersonDataset(gt, input_size=64, cache="off")
    np.testing.assert_allclose(det_data.boxes, gt_data.boxes)  # the same crop boxes, clipping included
    for i in range(2):
        assert torch.equal(det_data[i]["image"], gt_data[i]["image"])
        assert det_data[i]["valid"] and det_data[i]["visibility"].sum() == 0


class OracleModel(torch.nn.Module):
    """Returns, batch after batch, the Gaussian heatmaps of given keypoints (heatmap coordinates):
    a perfect network for the crops it is shown in order."""

    def __init__(self, keypoints: np.ndarray, visibility: np.ndarray, size: int):
        super().__init__()
        heatmaps, _ = render_heatmaps(torch.as_tensor(keypoints), torch.as_tensor(visibility), size)
        self.heatmaps, self.next = heatmaps, 0
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        out = self.heatmaps[self.next : self.next + len(x)]
        self.next += len(x)
        return out + self.dummy


def two_images_three_people(tiny_coco):
    first, second = tiny_coco.add_image(160, 120), tiny_coco.add_image(160, 120)
    tiny_coco.add_person(first, bbox=(10.0, 10.0, 50.0, 100.0))
    tiny_coco.add_person(first, bbox=(90.0, 15.0, 45.0, 95.0))
    tiny_coco.add_person(second, bbox=(50.0, 20.0, 55.0, 90.0))
    root = tiny_coco.write("val2017")
    return root, first, second


def test_top_down_protocol_end_to_end_with_a_perfect_network(tiny_coco, tmp_path):
    root, first, second = two_images_three_people(tiny_coco)
    people = tiny_coco.annotations
    dets = []
    for ann in people:  # every person found, once exactly and once a pixel off (a duplicate)
        dets.append(det(ann["image_id"], ann["bbox"], 0.9))
        dets.append(det(ann["image_id"], np.add(ann["bbox"], [1, 1, 0, 0]).tolist(), 0.6))
    dets.append(det(second, [100.0, 10.0, 40.0, 60.0], 0.3))  # background
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(dets))
    detections = read_detections(path)
    annotation_file = tiny_coco.annotation_file("val2017")
    index, _, _ = detection_index(read_detections(path), annotation_file, root / "val2017", "val2017")
    boxes = PersonDataset(index, input_size=64, cache="off").boxes
    owner = [0, 0, 1, 1, 2, 2, None]
    keypoints = np.zeros((7, 17, 2), np.float32)
    visibility = np.zeros((7, 17), np.int64)
    for i, p in enumerate(owner):
        if p is not None:
            kp = np.array(people[p]["keypoints"], np.float64).reshape(17, 3)
            keypoints[i] = image_to_frame(kp[:, :2], boxes[i], 16)
            visibility[i] = 2
    block, results = evaluate_detected_boxes(
        OracleModel(keypoints, visibility, 16), detections, annotation_file, root / "val2017", "val2017",
        coco_ground_truth(annotation_file), input_size=64, batch_size=4, device="cpu", precision="fp32", progress=False)
    assert block["boxes"] == f"detected boxes: {path}"
    assert block["instances_before_nms"] == 7
    assert block["instances_after_nms"] == 4  # the three duplicates are gone, the background box stays
    assert sorted(round(r["score"], 3) for r in results)[0] == 0.0  # an empty heatmap: no confident keypoint
    assert block["coco"]["AP"] > 0.9
    assert block["errors"]["overall"]["good"] > 0.9 * 51 and block["errors"]["overall"]["inversion"] == 0
    # the AP reported is pycocotools' on the results it scored
    results_file = tmp_path / "results.json"
    results_file.write_text(json.dumps(results))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(annotation_file))
        evaluator = COCOeval(coco, coco.loadRes(str(results_file)), "keypoints")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert block["coco"]["AP"] == pytest.approx(evaluator.stats[0], abs=1e-12)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return save_model(build_model(TINY, seed=0), tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


@pytest.mark.slow
def test_evaluate_with_detected_boxes_flip_test_dark_and_plots(synth_dataset, tiny_checkpoint, tmp_path, capsys):
    boxes = write_jittered_detections(synth_dataset / "annotations" / "person_keypoints_val2017.json",
                                      tmp_path / "dets.json")
    out = tmp_path / "eval.json"
    code = main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--data", str(synth_dataset), "--workers", "0",
                 "--device", "cpu", "--no-progress", "--cache", "off", "--out", str(out), "--boxes", str(boxes),
                 "--flip-test", "--decode", "dark", "--plots", "--precision", "fp32"])
    printed = capsys.readouterr().out
    assert code == 0
    written = json.loads(out.read_text())
    detected = written["detected_boxes"]
    assert detected["boxes"] == f"detected boxes: {boxes}" and written["coco_boxes"] == "ground-truth boxes"
    assert written["protocol"] == {"flip_test": True, "decode": "dark",
                                   "pck_boxes": "ground-truth boxes (PCK is a ground-truth-box metric)"}
    assert f"COCO keypoints (detected boxes: {boxes}): AP {detected['coco']['AP']:.3f}" in printed
    assert "COCO keypoints (ground-truth boxes): AP" in printed and "AP(det)" in printed
    assert detected["instances_before_nms"] == detected["boxes_evaluated"] >= detected["instances_after_nms"]
    assert set(written["per_keypoint_ap"]) == set(detected["per_keypoint_ap"])
    assert len(detected["per_keypoint_ap"]) == 17
    assert set(detected["errors"]["ap_if_fixed"]) == {"jitter", "inversion", "swap", "miss", "all"}
    for name in ("eval_errors.png", "eval_errors_detected.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    assert written["plots"] == [str(tmp_path / "eval_errors.png"), str(tmp_path / "eval_errors_detected.png")]
    # the AP printed and written is COCOeval's on the written results file, over every image
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(synth_dataset / "annotations" / "person_keypoints_val2017.json"))
        evaluator = COCOeval(coco, coco.loadRes(detected["results_file"]), "keypoints")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert detected["coco"]["AP"] == pytest.approx(evaluator.stats[0], abs=1e-12)
    assert detected["coco"]["AR"] == pytest.approx(evaluator.stats[5], abs=1e-12)


def test_evaluate_with_a_bad_detection_file_is_a_one_line_error(synth_dataset, tiny_checkpoint, tmp_path, capsys):
    bad = tmp_path / "dets.json"
    bad.write_text('[{"image_id": 1}]')
    code = main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--data", str(synth_dataset),
                 "--device", "cpu", "--boxes", str(bad)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and str(bad) in err and "has no 'bbox'" in err
    code = main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--data", str(synth_dataset),
                 "--device", "cpu", "--plots"])
    assert code == 2 and "--out" in capsys.readouterr().err


def test_jittered_detections_are_deterministic_with_duplicates_and_false_positives(tiny_coco, tmp_path):
    root, first, second = two_images_three_people(tiny_coco)
    a = write_jittered_detections(tiny_coco.annotation_file("val2017"), tmp_path / "a.json", seed=1,
                                  miss_rate=0.0, duplicate_rate=1.0, false_positives=2.0)
    b = write_jittered_detections(tiny_coco.annotation_file("val2017"), tmp_path / "b.json", seed=1,
                                  miss_rate=0.0, duplicate_rate=1.0, false_positives=2.0)
    assert a.read_bytes() == b.read_bytes()
    dets = json.loads(a.read_text())
    assert len(dets) > 6 and {d["image_id"] for d in dets} == {first, second}
    assert all(d["score"] < 0.5 for d in dets[6:])  # false positives come last, with low scores
    path = demo_detections(root)
    assert path == root / "annotations" / "detections_val2017_jittered.json" and path.is_file()
    stamp = path.stat().st_mtime_ns
    assert demo_detections(root).stat().st_mtime_ns == stamp  # written once


def test_predict_with_a_detection_file_keeps_the_detector_score(tiny_coco, tiny_checkpoint, tmp_path):
    root, first, second = two_images_three_people(tiny_coco)
    path = tmp_path / "dets.json"
    path.write_text(json.dumps([det(first, [10, 10, 50, 100], 0.9), det(first, [90, 15, 45, 95], 0.1),
                                det(second, [50, 20, 55, 90], 0.7)]))
    out = tmp_path / "pred"
    code = main(["predict", "--checkpoint", str(tiny_checkpoint), str(root / "val2017"), "--boxes", str(path),
                 "--min-box-score", "0.5", "--out", str(out), "--device", "cpu", "--no-overlays"])
    assert code == 0
    results = json.loads((out / "keypoints.json").read_text())
    assert sorted((r["image_id"], r["box_score"]) for r in results) == [(first, 0.9), (second, 0.7)]
    for r in results:  # the instance score is the protocol's: box score x mean confident keypoint
        confidence = np.array(r["keypoints"][2::3])
        above = confidence[confidence > 0.2]
        assert r["score"] == pytest.approx(r["box_score"] * (above.mean() if len(above) else 0.0), abs=1e-3)


def test_detected_boxes_on_a_held_out_split_count_only_its_images(synth_dataset, tiny_checkpoint, tmp_path):
    from hgpose.evaluate import evaluate_checkpoint, load_eval_index

    boxes = write_jittered_detections(synth_dataset / "annotations" / "person_keypoints_train2017.json",
                                      tmp_path / "dets.json")
    result = evaluate_checkpoint(tiny_checkpoint, synth_dataset, split="val", batch_size=8, device="cpu",
                                 precision="fp32", progress=False, cache="off", boxes=boxes)
    held_out = np.unique(load_eval_index(synth_dataset, "val", tiny_checkpoint).image_ids)
    detected = result["detected_boxes"]
    assert detected["images_evaluated"] == len(held_out) < 24
    assert detected["boxes_skipped"]["image outside the split"] > 0
    assert {r["image_id"] for r in result["detected_coco_results"]} <= set(held_out.tolist())
