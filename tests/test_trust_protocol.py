"""COCO AP comparable with published numbers: ground truth without `area` follows xtcocotools'
use_area=False (0.53 w h), OKS-NMS scales each detected person by its padded crop, and dropped
detected boxes are counted by reason, with the person category id checked against the dataset's."""

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
from hgpose.data.person_boxes import read_detections
from hgpose.evaluation.coco import coco_ground_truth, coco_keypoint_stats
from hgpose.evaluation.oks import COCO_SIGMAS
from hgpose.evaluation.topdown import evaluate_detected_boxes
from hgpose.keypoints import PERSON_CATEGORY
from hgpose.model.hourglass import ModelConfig, build_model
from hgpose.model.weights import save_model
from hgpose.runtime.files import UserError

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TINY = ModelConfig(depth=2, features=16, input_size=64)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return save_model(build_model(TINY, seed=0), tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


def people_file(tiny_coco, with_area: bool):
    boxes = [(20.0, 10.0, 40.0, 90.0), (90.0, 20.0, 50.0, 80.0), (30.0, 30.0, 30.0, 60.0)]
    for bbox in boxes:
        image = tiny_coco.add_image()
        ann = tiny_coco.add_person(image, bbox=bbox)
        if not with_area:
            del tiny_coco.annotations[ann - 1]["area"]
    tiny_coco.write("val2017")
    return tiny_coco.annotation_file("val2017")


def shifted_results(annotation_file, shift: float) -> list[dict]:
    data = json.loads(annotation_file.read_text())
    results = []
    for ann in data["annotations"]:
        points = np.array(ann["keypoints"], dtype=np.float64).reshape(17, 3)
        points[:, 0] += shift
        results.append({"image_id": ann["image_id"], "category_id": 1, "score": 0.9,
                        "keypoints": points.reshape(-1).tolist()})
    return results


def pycocotools_ap(data: dict, results: list[dict]) -> float:
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = data
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(results), "keypoints")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[0])


def test_ground_truth_without_area_uses_053_w_h_and_says_so(tiny_coco, capsys):
    annotation_file = people_file(tiny_coco, with_area=False)
    coco = coco_ground_truth(annotation_file)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "3 of 3 person annotations have no 'area'" in err[0] and "0.53" in err[0], err
    for ann in coco.dataset["annotations"]:
        assert ann["area"] == pytest.approx(0.53 * ann["bbox"][2] * ann["bbox"][3])

    # AP equals pycocotools' on the file with area = 0.53 w h written in, and not the bare box area's
    results = shifted_results(annotation_file, shift=4.0)
    ours = coco_keypoint_stats(annotation_file, results, [1, 2, 3])["AP"]
    data = json.loads(annotation_file.read_text())
    for ann in data["annotations"]:
        ann["area"] = 0.53 * ann["bbox"][2] * ann["bbox"][3]
    assert ours == pytest.approx(pycocotools_ap(data, results), abs=1e-12)
    for ann in data["annotations"]:
        ann["area"] = ann["bbox"][2] * ann["bbox"][3]
    assert ours < pycocotools_ap(data, results)  # the old rule scored the same predictions higher


def test_ground_truth_with_area_uses_it_silently(tiny_coco, capsys):
    coco = coco_ground_truth(people_file(tiny_coco, with_area=True))
    assert capsys.readouterr().err == ""
    assert all(ann["area"] == ann["bbox"][2] * ann["bbox"][3] for ann in coco.dataset["annotations"])


def pair_oks(a: np.ndarray, b: np.ndarray, area: float) -> float:
    """OKS between two predictions as OKS-NMS computes it (both with the same area)."""
    d2 = ((a[:, :2] - b[:, :2]) ** 2).sum(-1)
    return float(np.exp(-d2 / ((2 * COCO_SIGMAS) ** 2 * 2 * area)).mean())


def test_oks_nms_scales_detected_people_by_their_padded_crop(tiny_coco, tiny_checkpoint):
    image = tiny_coco.add_image(width=160, height=120)
    tiny_coco.add_person(image, bbox=(50.0, 15.0, 40.0, 90.0))
    tiny_coco.write("val2017")
    annotation_file = tiny_coco.annotation_file("val2017")
    detections_file = tiny_coco.root / "dets.json"
    bboxes = [(50.0, 15.0, 40.0, 90.0), (52.0, 16.0, 40.0, 90.0)]  # one person, found twice
    detections_file.write_text(json.dumps([{"image_id": image, "category_id": 1, "bbox": list(b), "score": s}
                                           for b, s in zip(bboxes, (0.9, 0.8))]))
    model, coco = build_model(TINY, seed=0).eval(), coco_ground_truth(annotation_file)
    run = dict(input_size=64, batch_size=4, device=torch.device("cpu"), precision="fp32", progress=False)

    def after_nms(threshold: float) -> tuple[dict, list[dict]]:
        return evaluate_detected_boxes(model, read_detections(detections_file), annotation_file,
                                       tiny_coco.root / "val2017", "val2017", coco, nms_threshold=threshold, **run)

    block, results = after_nms(1.0)  # nothing suppressed: both predictions
    assert block["instances_after_nms"] == 2
    a, b = (np.array(r["keypoints"]).reshape(17, 3) for r in results)
    crop_area, box_area = (90 * 1.25) ** 2, 40 * 90
    by_crop, by_box = pair_oks(a, b, crop_area), pair_oks(a, b, box_area)
    assert by_crop - by_box > 0.02, "the two rules must disagree for this test to mean anything"
    block, _ = after_nms((by_crop + by_box) / 2)
    assert block["instances_after_nms"] == 1  # the crop's area: the duplicate goes; the box's would keep it


def bicycle_and_person(tiny_coco):
    """A dataset numbering person 2 (bicycle is 1), as files merged from other sources do."""
    for _ in range(2):
        image = tiny_coco.add_image()
        tiny_coco.add_person(image, category_id=2)
    tiny_coco.write("val2017", categories=[{"id": 1, "name": "bicycle"}, dict(PERSON_CATEGORY, id=2)])
    return tiny_coco.root


def test_a_detection_file_with_another_person_id_is_one_line(tiny_coco, tiny_checkpoint, tmp_path, capsys):
    root = bicycle_and_person(tiny_coco)
    boxes = tmp_path / "dets.json"
    boxes.write_text(json.dumps([{"image_id": i, "category_id": 1, "bbox": [40, 20, 40, 80], "score": 0.9}
                                 for i in (1, 2)]))
    with pytest.raises(UserError, match=r"none of its 2 boxes has the dataset's person category_id"):
        read_detections(boxes, category_id=2)
    capsys.readouterr()
    code = main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--data", str(root), "--workers", "0",
                 "--device", "cpu", "--no-progress", "--cache", "off", "--boxes", str(boxes)])
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("val2017: kept")]
    assert code == 2 and len(err) == 1, err
    assert "names person 2" in err[0] and "category_id 1" in err[0]


def test_dropped_boxes_are_printed_by_reason_and_cropped_counts_what_was_cropped(tiny_coco, tiny_checkpoint,
                                                                                 tmp_path, capsys):
    good = [tiny_coco.add_image() for _ in range(2)]
    missing = tiny_coco.add_image(write=False)  # listed in the file, no JPEG: unreadable
    for image in (*good, missing):
        tiny_coco.add_person(image)
    root = tiny_coco.write("val2017")
    box = [40, 20, 40, 80]
    entries = [(good[0], 1, box, 0.9), (good[1], 1, box, 0.8),  # cropped
               (good[0], 3, box, 0.9),  # not a person
               (good[1], 1, box, 0.01),  # below --min-box-score
               (good[0], 1, [40, 20, 0, 80], 0.9),  # degenerate
               (missing, 1, box, 0.9)]  # on an unreadable image
    boxes = tmp_path / "dets.json"
    boxes.write_text(json.dumps([{"image_id": i, "category_id": c, "bbox": b, "score": s} for i, c, b, s in entries]))
    out = tmp_path / "eval.json"
    code = main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--data", str(root), "--workers", "0",
                 "--device", "cpu", "--no-progress", "--cache", "off", "--boxes", str(boxes), "--min-box-score",
                 "0.1", "--precision", "fp32", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "  2 of 6 boxes cropped" in printed, printed
    assert ("boxes not cropped: not a person 1, below --min-box-score 1, degenerate or outside its image 1, "
            "on an unreadable image 1") in printed, printed
    detected = json.loads(out.read_text())["detected_boxes"]
    assert detected["boxes_cropped"] == 2 and detected["boxes_skipped"]["unreadable image"] == 1
