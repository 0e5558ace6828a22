"""predict and evaluate tell the same truth: with default settings (and with any one --precision given
to both) they give identical keypoints on the same generated images and boxes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import hgpose
from hgpose.cli import main
from hgpose.evaluate import evaluate_checkpoint
from hgpose.model.hourglass import ModelConfig, build_model
from hgpose.model.weights import save_model
from hgpose.runtime.precision import resolve_precision

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_model(build_model(ModelConfig(depth=2, features=32, input_size=64)),
                      tmp_path_factory.mktemp("agree") / "tiny.safetensors")


def _by_image(results: list[dict]) -> dict[int, np.ndarray]:
    people: dict[int, list] = {}
    for r in results:
        people.setdefault(r["image_id"], []).append(r["keypoints"])
    return {image_id: np.array(rows) for image_id, rows in people.items()}


def _evaluate_and_predict(checkpoint, data, tmp_path, **options):
    """(evaluate's results, predict's results) on the val split's images and ground-truth boxes, both
    given the same options (none: their defaults)."""
    evaluate_checkpoint(checkpoint, data, split="val2017", workers=0, progress=False,
                        out=tmp_path / "eval.json", **options)
    evaluated = json.loads((tmp_path / "eval_keypoints.json").read_text())
    flags = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        flags += [flag] if value is True else [flag, str(value)]
    # the people evaluate scores: predict is given those boxes (evaluate leaves out people without keypoints)
    annotations = json.loads((data / "annotations" / "person_keypoints_val2017.json").read_text())
    annotations["annotations"] = [a for a in annotations["annotations"]
                                  if a.get("num_keypoints", 0) > 0 and not a.get("iscrowd", 0)]
    boxes = tmp_path / "people.json"
    boxes.write_text(json.dumps(annotations))
    assert main(["predict", "--checkpoint", str(checkpoint), str(data / "val2017"), "--boxes",
                 str(boxes), "--out", str(tmp_path / "pred"),
                 "--no-overlays", "--no-progress", *flags]) == 0
    return evaluated, json.loads((tmp_path / "pred" / "keypoints.json").read_text())


@pytest.mark.parametrize("options", [{}, {"precision": "fp32"}, {"flip_test": True, "decode": "dark", "batch_size": 5}],
                         ids=["defaults", "fp32", "flip-dark-batch5"])
def test_predict_gives_evaluates_keypoints(checkpoint, synth_dataset, tmp_path, options):
    evaluated, predicted = _evaluate_and_predict(checkpoint, synth_dataset, tmp_path, **options)
    assert len(evaluated) == len(predicted) > 8
    ours, theirs = _by_image(evaluated), _by_image(predicted)
    assert ours.keys() == theirs.keys()
    for image_id in ours:  # each image's people in the annotation file's order, digit for digit
        np.testing.assert_array_equal(ours[image_id], theirs[image_id], err_msg=f"image id {image_id}")


def test_load_takes_evaluates_precision_and_default(checkpoint, synth_dataset):
    data = json.loads((synth_dataset / "annotations" / "person_keypoints_val2017.json").read_text())
    image = data["images"][0]
    boxes = [a["bbox"] for a in data["annotations"] if a["image_id"] == image["id"] and not a.get("iscrowd")]
    path = synth_dataset / "val2017" / image["file_name"]
    default = hgpose.load(checkpoint)
    assert default.precision == resolve_precision("auto", torch.device("cpu"))  # what evaluate runs by default
    same = hgpose.load(checkpoint, precision="auto")
    np.testing.assert_array_equal(default.predict(path, boxes), same.predict(path, boxes))
    fp32 = hgpose.load(checkpoint, precision="fp32")
    bf16 = hgpose.load(checkpoint, precision="bf16")
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    # bf16 rounds every activation: the heatmap peaks (confidences) cannot all come out as in fp32
    assert not np.array_equal(fp32.predict(path, boxes)[..., 2], bf16.predict(path, boxes)[..., 2])
    with pytest.raises(hgpose.UserError, match="--precision must be one of auto, fp32, bf16"):
        hgpose.load(checkpoint, precision="fp16")
