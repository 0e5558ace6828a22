"""ONNX export of a checkpoint, checked against PyTorch with onnxruntime before it is written.

The exported graph takes what HourglassNet takes: float32 RGB images (N, 3, S, S) in [0, 1]
(uint8 / 255, see hgpose.model.to_model_input), with N dynamic, and returns the last stack's
heatmaps (N, 17, S/4, S/4). The model config and the input convention are stored as ONNX metadata.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hgpose.model.hourglass import HourglassNet
from hgpose.model.weights import CONFIG_METADATA_KEY, load_model
from hgpose.runtime.files import UserError, atomic_path

DEFAULT_OPSET = 18
TOLERANCE = 1e-4
INPUT_NAME, OUTPUT_NAME = "image", "heatmaps"
INPUT_DESCRIPTION = "float32 RGB (N, 3, S, S) in [0, 1]: uint8 pixels / 255, no mean/std; N dynamic"


@dataclass
class ExportResult:
    path: Path
    max_abs_diff: float  # largest |onnxruntime - PyTorch| over the verification batches
    exporter: str  # "dynamo" (torch.export based) or "torchscript" (the legacy exporter)
    opset: int


def require_export_packages(*names: str) -> None:
    """One-line UserError naming the extra when onnx, onnxscript or onnxruntime is missing."""
    missing = [n for n in names if importlib.util.find_spec(n) is None]
    if missing:
        raise UserError(f"ONNX export needs {', '.join(missing)}: pip install hgpose[export]")


def export_onnx(checkpoint, out=None, opset: int = DEFAULT_OPSET, tolerance: float = TOLERANCE,
                seed: int = 0) -> ExportResult:
    """Export a checkpoint path (or an HourglassNet) to ONNX and verify it with onnxruntime.

    The file is written only when the largest difference from PyTorch on random batches of 2 and 3
    (the second one proves the batch dimension is dynamic) is at most `tolerance`; otherwise a
    UserError says by how much it differs and nothing is left behind.
    """
    require_export_packages("onnx", "onnxruntime")
    import onnx

    if not 1 <= opset <= onnx.defs.onnx_opset_version():
        raise UserError(f"--opset {opset}: this onnx writes opsets 1 to {onnx.defs.onnx_opset_version()}")
    if isinstance(checkpoint, HourglassNet):
        model = checkpoint
        if out is None:
            raise ValueError("export_onnx(model, out): `out` is needed when exporting a model object")
    else:
        model = load_model(checkpoint)
        out = Path(checkpoint).with_suffix(".onnx") if out is None else out
    model = model.to("cpu").eval()
    out = Path(out)
    example = torch.rand(2, 3, model.config.input_size, model.config.input_size,
                         generator=torch.Generator().manual_seed(seed))
    with atomic_path(out) as tmp:
        exporter = _export(model, example, tmp, opset)
        _add_metadata(tmp, model)
        written = _default_domain_opset(tmp)
        if written != opset:  # the exporters fall back to their own opset when they cannot convert
            raise UserError(f"--opset {opset}: this torch/onnx cannot export at that opset (it produced opset "
                            f"{written}); nothing written to {out}")
        diff = max(verify_onnx(tmp, model, batch, seed + batch) for batch in (2, 3))
        if not diff <= tolerance:  # also catches NaN
            raise UserError(f"exported ONNX model differs from PyTorch by {diff:.3g} (> {tolerance:g}); "
                            f"nothing written to {out}")
    return ExportResult(out, diff, exporter, opset)


def _default_domain_opset(path: Path) -> int | None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), None)


def _export(model: HourglassNet, example: torch.Tensor, path: Path, opset: int) -> str:
    """torch.export-based exporter first; the legacy TorchScript one if it fails (older torch, odd ops)."""
    problems = []
    if importlib.util.find_spec("onnxscript") is not None:
        try:
            with _quiet():
                program = torch.onnx.export(
                    model, (example,), None, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                    dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), opset_version=opset,
                    dynamo=True, verbose=False,
                )
                program.save(str(path))
            return "dynamo"
        except Exception as exc:  # any failure of the new exporter: fall back to the legacy one
            problems.append(f"dynamo exporter: {_first_line(exc)}")
    try:
        with _quiet():
            torch.onnx.export(
                model, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, opset_version=opset,
                dynamo=False,
            )
        return "torchscript"
    except Exception as exc:
        problems.append(f"torchscript exporter: {_first_line(exc)}")
        raise UserError(f"ONNX export failed at opset {opset}: {'; '.join(problems)}") from None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextmanager
def _quiet():
    """Silence the exporters' deprecation warnings and registry log lines (e.g. no torchvision)."""
    # onnxscript logs a whole traceback when it cannot convert to the asked opset (checked after export)
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL if logger.name == "onnxscript" else logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _add_metadata(path: Path, model: HourglassNet) -> None:
    import onnx

    proto = onnx.load(str(path))
    for key, value in ((CONFIG_METADATA_KEY, model.config.to_json()), ("input", INPUT_DESCRIPTION),
                       ("output", "heatmaps (N, K, S/4, S/4) of the last stack; argmax = keypoint")):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def verify_onnx(path, model: HourglassNet, batch: int = 2, seed: int = 0) -> float:
    """Largest |onnxruntime - PyTorch| on a random batch of `batch` inputs in [0, 1]."""
    require_export_packages("onnxruntime")
    import onnxruntime

    size = model.config.input_size
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.inference_mode():
        expected = model.to("cpu").eval()(x).numpy()
    if got.shape != expected.shape:
        raise UserError(f"{path}: ONNX output shape {got.shape} differs from PyTorch's {expected.shape}")
    return float(np.abs(got - expected).max())
