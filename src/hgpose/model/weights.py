"""Model weights on disk: safetensors with the ModelConfig as JSON in the header, never a pickle.
A checkpoint's header is checked (config within bounds, tensor names, shapes and dtypes) before any
tensor is read, so a hostile or damaged file is one line, not a huge allocation."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import safe_open, save_file

from hgpose.model.hourglass import HourglassNet, ModelConfig
from hgpose.runtime.files import UserError, atomic_path

CONFIG_METADATA_KEY = "hgpose_model_config"


def save_model(model: HourglassNet, path: str | Path, extra_metadata: dict[str, str] | None = None) -> Path:
    path = Path(path)
    module = getattr(model, "module", model)  # unwrap DDP
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    metadata = {CONFIG_METADATA_KEY: module.config.to_json(), **(extra_metadata or {})}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return path


# Upper bounds on a model config: far beyond any useful hourglass, but they keep a hostile checkpoint
# header (or a typo on the command line) from making hgpose build a huge model.
CHECKPOINT_CONFIG_LIMITS = {"num_stacks": 16, "depth": 8, "residuals_per_level": 16, "bottleneck_residuals": 64,
                            "features": 4096, "num_keypoints": 1024, "input_size": 4096}


def beyond_limits(values: dict) -> str | None:
    """'features=100000, ...' for the model-config values over CHECKPOINT_CONFIG_LIMITS, else None."""
    too_large = [f"{k}={v}" for k, v in values.items() if isinstance(v, int) and v > CHECKPOINT_CONFIG_LIMITS.get(k, v)]
    return f"{', '.join(too_large)} beyond the limits {CHECKPOINT_CONFIG_LIMITS}" if too_large else None


def read_model_config(path: str | Path) -> ModelConfig:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as exc:  # safetensors raises several error types for a bad header
        raise UserError(f"{path}: not a safetensors checkpoint ({exc})") from None
    if CONFIG_METADATA_KEY not in metadata:
        raise UserError(f"{path}: safetensors file has no hgpose model config; not an hgpose checkpoint")
    try:
        values = json.loads(metadata[CONFIG_METADATA_KEY])
        if not isinstance(values, dict):
            raise ValueError("not a JSON object")
        if beyond_limits(values):
            raise ValueError(beyond_limits(values))
        return ModelConfig.from_dict(values)
    except (ValueError, TypeError) as exc:
        raise UserError(f"{path}: bad model config in checkpoint: {exc}") from None


def expected_tensor_shapes(config: ModelConfig) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """The state-dict names, shapes and dtypes of a model, computed without allocating it (meta device)."""
    with torch.device("meta"):
        model = HourglassNet(config)
    return {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}


_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64}


def check_tensor_shapes(path: str | Path, config: ModelConfig) -> None:
    """Compare a checkpoint's header (names, shapes, dtypes) with what `config` builds, before any
    tensor is read: a wrong or hostile file is a one-line error, never a large allocation."""
    path = Path(path)
    expected = expected_tensor_shapes(config)
    try:
        with safe_open(str(path), framework="pt") as f:
            found = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    except Exception as exc:
        raise UserError(f"{path}: not a readable safetensors checkpoint ({exc})") from None
    missing = sorted(set(expected) - set(found))
    if missing:
        raise UserError(f"{path}: checkpoint lacks {len(missing)} model tensors (e.g. {missing[0]})")
    for name, (shape, dtype) in expected.items():
        found_shape, found_dtype = found[name]
        if found_shape != shape or _SAFETENSORS_DTYPES.get(found_dtype) != dtype:
            raise UserError(f"{path}: tensor {name} is {found_dtype} {list(found_shape)}, the model config "
                            f"{config} needs {str(dtype).removeprefix('torch.')} {list(shape)}")


def load_model(path: str | Path, expected_config: ModelConfig | None = None, device="cpu") -> HourglassNet:
    """Load a checkpoint written by save_model (or a training checkpoint's weights file)."""
    config = read_model_config(path)
    if expected_config is not None and config != expected_config:
        raise UserError(f"{path}: checkpoint model config {config} does not match the expected {expected_config}")
    check_tensor_shapes(path, config)
    model = HourglassNet(config)
    with safe_open(str(path), framework="pt") as f:  # the model's tensors only (training files hold more)
        state = {k: f.get_tensor(k) for k in model.state_dict()}
    model.load_state_dict(state)
    return model.to(device).eval()
