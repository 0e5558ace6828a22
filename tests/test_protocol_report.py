"""`hgpose report`: the test COCO APs under Table 1, each with the boxes it used."""

import json

from hgpose.report import write_report


def test_report_lists_the_test_ap_of_each_box_source(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("epoch,lr,train_loss,val_loss,val_pck\n"
                                     "1,0.001,0.1,0.2,0.3\n2,0.001,0.05,0.1,0.4\n")
    test_eval = {
        "split": "val2017", "checkpoint": "best.safetensors", "pck_style": "seed", "pck": {"all": {"overall": 0.5}},
        "coco": {"AP": 0.61, "AP50": 0.9, "AP75": 0.7}, "coco_boxes": "ground-truth boxes",
        "detected_boxes": {"boxes": "detected boxes: dets.json", "coco": {"AP": 0.55, "AP50": 0.85, "AP75": None}},
    }
    (run / "test_eval.json").write_text(json.dumps(test_eval))
    outputs = write_report(run)
    text = outputs["table1.md"].read_text()
    assert "Test PCK (val2017, ground-truth boxes," in text
    assert "Test COCO keypoint AP / AP50 / AP75 (ground-truth boxes): 0.610 / 0.900 / 0.700." in text
    assert "Test COCO keypoint AP / AP50 / AP75 (detected boxes: dets.json): 0.550 / 0.850 / -." in text
    report = json.loads(outputs["report.json"].read_text())
    assert [row["boxes"] for row in report["selected_model"]["test_ap"]] == [
        "ground-truth boxes", "detected boxes: dets.json"]
    # an older evaluation without the labels: its AP was on ground-truth boxes
    del test_eval["coco_boxes"], test_eval["detected_boxes"]
    (run / "test_eval.json").write_text(json.dumps(test_eval))
    text = write_report(run)["table1.md"].read_text()
    assert "(ground-truth boxes): 0.610" in text and "detected" not in text
