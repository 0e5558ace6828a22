"""ONNX export of a checkpoint, checked against PyTorch with onnxruntime before it is written.

Two graphs, N dynamic in both (hgpose.model.export_graph):

- "keypoints" (the default): uint8 RGB crops (N, S, S, 3) in, `keypoints` (N, 17, 3) out: x, y in
  crop pixels and the confidence, decoded as `hgpose predict` decodes (quarter-pixel rule or DARK,
  optionally the flip test), plus the `heatmaps` they came from;
- "heatmaps": what HourglassNet takes and returns: float32 RGB (N, 3, S, S) in [0, 1] (uint8 / 255,
  hgpose.model.to_model_input) in, the last stack's heatmaps (N, 17, S/4, S/4) out.

The model config, the input convention and the decoding are stored as ONNX metadata.
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

from hgpose.model.export_graph import (
    CROP_DESCRIPTION,
    GRAPHS,
    KEYPOINTS_DESCRIPTION,
    CropKeypoints,
    example_input,
    heatmaps_to_crop_pixels,
    io_names,
)
from hgpose.model.heatmaps import decode_heatmaps
from hgpose.model.hourglass import HourglassNet
from hgpose.model.weights import CONFIG_METADATA_KEY, load_model
from hgpose.runtime.files import UserError, atomic_path

DEFAULT_OPSET = 18
TOLERANCE = 1e-4
DECODE_TOLERANCE = 1e-3  # crop pixels: the graph's keypoints against decode_heatmaps of its own heatmaps
INPUT_DESCRIPTION = "float32 RGB (N, 3, S, S) in [0, 1]: uint8 pixels / 255, no mean/std; N dynamic"


@dataclass
class ExportResult:
    path: Path
    max_abs_diff: float  # largest |onnxruntime - PyTorch| over the verification batches
    exporter: str  # "dynamo" (torch.export based) or "torchscript" (the legacy exporter)
    opset: int
    graph: str = "keypoints"  # "keypoints" (crops in, decoded keypoints out) or "heatmaps"


def require_export_packages(*names: str) -> None:
    """One-line UserError naming the extra when onnx, onnxscript or onnxruntime is missing."""
    missing = [n for n in names if importlib.util.find_spec(n) is None]
    if missing:
        raise UserError(f"ONNX export needs {', '.join(missing)}: pip install hgpose[export]")


def export_onnx(checkpoint, out=None, opset: int = DEFAULT_OPSET, tolerance: float = TOLERANCE,
                seed: int = 0, graph: str = "keypoints", decode: str = "quarter",
                flip_test: bool = False) -> ExportResult:
    """Export a checkpoint path (or an HourglassNet) to ONNX and verify it with onnxruntime.

    graph "keypoints" (default) takes uint8 crops (N, S, S, 3) and returns keypoints in crop pixels
    decoded with `decode` and `flip_test` as `hgpose predict` does; "heatmaps" is the bare network.
    The file is written only when the largest heatmap difference from PyTorch on random batches of
    2 and 3 (the second one proves the batch dimension is dynamic) is at most `tolerance`, and the
    graph's keypoints are its heatmaps decoded; otherwise a UserError says by how much it differs
    and nothing is left behind.
    """
    if graph not in GRAPHS:
        raise UserError(f"--graph must be one of {', '.join(GRAPHS)}, got {graph!r}")
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
    module = CropKeypoints(model, decode, flip_test).eval() if graph == "keypoints" else model
    example = example_input(module, 2, seed)
    with atomic_path(out) as tmp:
        exporter = _export(module, example, tmp, opset)
        _add_metadata(tmp, module)
        written = _default_domain_opset(tmp)
        if written != opset:  # the exporters fall back to their own opset when they cannot convert
            raise UserError(f"--opset {opset}: this torch/onnx cannot export at that opset (it produced opset "
                            f"{written}); nothing written to {out}")
        diff = max(verify_onnx(tmp, module, batch, seed + batch) for batch in (2, 3))
        if not diff <= tolerance:  # also catches NaN
            raise UserError(f"exported ONNX model differs from PyTorch by {diff:.3g} (> {tolerance:g}); "
                            f"nothing written to {out}")
    return ExportResult(out, diff, exporter, opset, graph)


def _default_domain_opset(path: Path) -> int | None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), None)


def _export(model: torch.nn.Module, example: torch.Tensor, path: Path, opset: int) -> str:
    """torch.export-based exporter first; the legacy TorchScript one if it fails (older torch, odd ops)."""
    inputs, outputs = io_names(model)
    problems = []
    if importlib.util.find_spec("onnxscript") is not None:
        try:
            with _quiet():
                program = torch.onnx.export(
                    model, (example,), None, input_names=inputs, output_names=outputs,
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
                model, (example,), str(path), input_names=inputs, output_names=outputs,
                dynamic_axes={name: {0: "batch"} for name in inputs + outputs}, opset_version=opset,
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


def _add_metadata(path: Path, module: torch.nn.Module) -> None:
    import onnx

    proto = onnx.load(str(path))
    if isinstance(module, CropKeypoints):
        entries = [("input", CROP_DESCRIPTION), ("output", KEYPOINTS_DESCRIPTION),
                   ("decode", module.decode), ("flip_test", str(module.flip).lower())]
    else:
        entries = [("input", INPUT_DESCRIPTION), ("output", "heatmaps (N, K, S/4, S/4) of the last stack")]
    for key, value in ((CONFIG_METADATA_KEY, module.config.to_json()), *entries):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def verify_onnx(path, module: torch.nn.Module, batch: int = 2, seed: int = 0) -> float:
    """Largest |onnxruntime - PyTorch| of the heatmaps on a random batch of `batch` inputs. For the
    keypoints graph, also a UserError when its keypoints are not its own heatmaps decoded as
    predict decodes them (compared with its own heatmaps, so that an argmax tie broken differently
    by a 1e-6 difference cannot fail an export)."""
    require_export_packages("onnxruntime")
    import onnxruntime  # optional: the export extra

    x = example_input(module, batch, seed)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.inference_mode():
        expected = module.to("cpu").eval()(x)
    if not isinstance(module, CropKeypoints):
        got, expected = got[0], expected.numpy()
        if got.shape != expected.shape:
            raise UserError(f"{path}: ONNX output shape {got.shape} differs from PyTorch's {expected.shape}")
        return float(np.abs(got - expected).max())
    keypoints, heatmaps = got
    if heatmaps.shape != tuple(expected[1].shape) or keypoints.shape != tuple(expected[0].shape):
        raise UserError(f"{path}: ONNX output shapes {keypoints.shape}, {heatmaps.shape} differ from PyTorch's")
    coords, confidence = decode_heatmaps(torch.from_numpy(heatmaps), module.decode)
    decoded = heatmaps_to_crop_pixels(coords, module.config.input_size, module.config.heatmap_size)
    off = max(float(np.abs(keypoints[..., :2] - decoded.numpy()).max()),
              float(np.abs(keypoints[..., 2] - confidence.numpy()).max()))
    if not off <= DECODE_TOLERANCE:
        raise UserError(f"{path}: the exported keypoints are {off:.3g} crop px from its heatmaps decoded "
                        f"(> {DECODE_TOLERANCE:g}); nothing written")
    return float(np.abs(heatmaps - expected[1].numpy()).max())
