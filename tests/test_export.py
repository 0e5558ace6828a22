"""`hgpose export --format onnx`: dynamic batch, agreement with PyTorch, clear errors, and the default
graph (uint8 crops in, keypoints out) giving `hgpose predict`'s keypoints on the documented crop."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from hgpose.cli import main
from hgpose.model.hourglass import ModelConfig, build_model
from hgpose.model.weights import load_model, save_model
from hgpose.predict import Predictor

TINY = ModelConfig(depth=2, features=32, input_size=64)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny checkpoint's bare network exported once through the command; (checkpoint, onnx path)."""
    folder = tmp_path_factory.mktemp("export")
    checkpoint = save_model(build_model(TINY, seed=3), folder / "tiny.safetensors")
    out = folder / "model.onnx"
    code = main(["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(out),
                 "--graph", "heatmaps"])
    assert code in (0, None)
    return checkpoint, out


def test_onnx_export_matches_pytorch_within_1e_4_at_any_batch_size(exported):
    import onnxruntime

    checkpoint, path = exported
    model = load_model(checkpoint)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch" and session.get_inputs()[0].shape[1:] == [3, 64, 64]
    for batch in (1, 5):
        x = torch.rand(batch, 3, 64, 64, generator=torch.Generator().manual_seed(batch))
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        with torch.no_grad():
            expected = model(x).numpy()
        assert got.shape == (batch, 17, 16, 16)
        assert np.abs(got - expected).max() < 1e-4


def test_export_records_the_model_config_and_the_input_convention(exported):
    import onnx

    checkpoint, path = exported
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert '"features": 32' in meta["hgpose_model_config"] and "[0, 1]" in meta["input"]


def test_export_prints_the_largest_difference(tmp_path, capsys, monkeypatch):
    import hgpose.model.export as export

    checkpoint = save_model(build_model(TINY), tmp_path / "m.safetensors")
    # a cheap stand-in exporter: the real one is exercised by the fixture above
    monkeypatch.setattr(export, "_export", lambda model, example, path, opset: _legacy(model, example, path, opset))
    assert main(["export", "--checkpoint", str(checkpoint)]) in (0, None)
    out = capsys.readouterr().out
    assert "max abs difference" in out and (tmp_path / "m.onnx").is_file()


def _legacy(model, example, path, opset):
    import warnings

    from hgpose.model.export_graph import io_names

    inputs, outputs = io_names(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes={name: {0: "batch"} for name in inputs + outputs}, opset_version=opset,
                          dynamo=False)
    return "torchscript"


def test_export_fails_clearly_when_onnx_and_pytorch_disagree(tmp_path, capsys, monkeypatch):
    import hgpose.model.export as export

    checkpoint = save_model(build_model(TINY), tmp_path / "m.safetensors")
    monkeypatch.setattr(export, "_export", lambda model, example, path, opset: _legacy(model, example, path, opset))
    monkeypatch.setattr(export, "verify_onnx", lambda *args, **kwargs: 0.5)
    code = main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "bad.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and "differs from PyTorch by 0.5" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad.onnx").exists() and not list(tmp_path.glob("*.tmp"))


def test_missing_onnxruntime_is_a_one_line_hint_to_install_the_extra(tmp_path, capsys, monkeypatch):
    checkpoint = save_model(build_model(TINY), tmp_path / "m.safetensors")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    code = main(["export", "--checkpoint", str(checkpoint)])
    err = capsys.readouterr().err
    assert code == 2 and "pip install hgpose[export]" in err and "onnxruntime" in err
    assert len(err.strip().splitlines()) == 1


def test_export_of_a_missing_checkpoint_is_a_one_line_error(tmp_path, capsys):
    code = main(["export", "--checkpoint", str(tmp_path / "nope.safetensors")])
    assert code == 2 and "not found" in capsys.readouterr().err


# --- the keypoints graph: predict's keypoints from onnxruntime -------------------------------------

DOCS = Path(__file__).resolve().parents[1] / "docs" / "commands" / "export.md"


def documented_crop_person():
    """The crop recipe of docs/commands/export.md, run as written (numpy and OpenCV only)."""
    block = next(b for b in re.findall(r"```python\n(.*?)```", DOCS.read_text(encoding="utf-8"), flags=re.S)
                 if "def crop_person" in b)
    namespace = {}
    exec(compile(block, str(DOCS), "exec"), namespace)
    return namespace["crop_person"]


@pytest.fixture(scope="module")
def people(synth_dataset):
    """Five people of the generated val2017 images: (RGB image, COCO box), one near an image border."""
    data = json.loads((synth_dataset / "annotations/person_keypoints_val2017.json").read_text())
    files = {image["id"]: image["file_name"] for image in data["images"]}
    chosen = [a for a in data["annotations"] if a["num_keypoints"] > 0][:5]
    images = {}
    for ann in chosen:
        path = synth_dataset / "val2017" / files[ann["image_id"]]
        images.setdefault(path, cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB))
    return [(images[synth_dataset / "val2017" / files[a["image_id"]]], a["bbox"]) for a in chosen]


@pytest.mark.slow
@pytest.mark.parametrize("decode, flip", [("quarter", False), ("dark", True)])
def test_onnx_keypoints_on_the_documented_crop_are_predicts_within_0_05_px(decode, flip, people, tmp_path, capsys):
    import onnxruntime

    checkpoint = save_model(build_model(TINY, seed=3), tmp_path / "tiny.safetensors")
    out = tmp_path / "model.onnx"
    flags = ["--decode", decode] + (["--flip-test"] if flip else [])
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out), *flags]) in (0, None)
    assert "output 'keypoints' (N, 17, 3)" in capsys.readouterr().out
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    size = session.get_inputs()[0].shape[1]
    assert session.get_inputs()[0].type == "tensor(uint8)" and session.get_inputs()[0].shape[1:] == [64, 64, 3]

    crop_person = documented_crop_person()
    crops, squares = zip(*(crop_person(image, box, size) for image, box in people))
    keypoints, heatmaps = session.run(["keypoints", "heatmaps"], {"crop": np.stack(crops)})
    assert keypoints.shape == (len(people), 17, 3)
    in_image = keypoints[..., :2] * np.array([s[2] for s in squares])[:, None, None] / size \
        + np.array([s[:2] for s in squares])[:, None, :]

    predictor = Predictor(load_model(checkpoint), flip_test=flip, decode=decode, precision="fp32")  # ONNX runs fp32
    expected = np.stack([predictor.predict(image, boxes=[box])[0] for image, box in people])
    assert np.abs(in_image - expected[..., :2]).max() < 0.05
    assert np.abs(keypoints[..., 2] - expected[..., 2]).max() < 1e-4

    # the decoding matters: a bare argmax times the stride is pixels away from predict
    flat = heatmaps.reshape(len(people), 17, -1).argmax(-1)
    naive = np.stack([flat % heatmaps.shape[-1], flat // heatmaps.shape[-1]], -1) * (size / heatmaps.shape[-1])
    assert np.abs(naive - keypoints[..., :2]).max() > 1.0


@pytest.mark.slow
def test_the_keypoints_graph_records_its_decoding(tmp_path):
    import onnx

    from hgpose.model.export import export_onnx

    result = export_onnx(build_model(TINY, seed=1), tmp_path / "k.onnx", decode="dark")
    meta = {p.key: p.value for p in onnx.load(str(result.path)).metadata_props}
    assert result.graph == "keypoints" and meta["decode"] == "dark" and meta["flip_test"] == "false"
    assert "(N, S, S, 3)" in meta["input"] and "crop pixels" in meta["output"]


def test_decoding_options_with_the_heatmaps_graph_are_a_one_line_error(tmp_path, capsys):
    checkpoint = save_model(build_model(TINY), tmp_path / "m.safetensors")
    code = main(["export", "--checkpoint", str(checkpoint), "--graph", "heatmaps", "--decode", "dark"])
    err = capsys.readouterr().err
    assert code == 2 and "--graph keypoints" in err and len(err.strip().splitlines()) == 1
