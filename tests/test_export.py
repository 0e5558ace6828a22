"""`hgpose export --format onnx`: dynamic batch, agreement with PyTorch, clear errors."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from hgpose.cli import main
from hgpose.model.hourglass import ModelConfig, build_model
from hgpose.model.weights import load_model, save_model

TINY = ModelConfig(depth=2, features=32, input_size=64)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny checkpoint exported once through the command; (checkpoint, onnx path, printed output)."""
    folder = tmp_path_factory.mktemp("export")
    checkpoint = save_model(build_model(TINY, seed=3), folder / "tiny.safetensors")
    out = folder / "model.onnx"
    code = main(["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(out)])
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

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), input_names=["image"], output_names=["heatmaps"],
                          dynamic_axes={"image": {0: "batch"}, "heatmaps": {0: "batch"}}, opset_version=opset,
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
