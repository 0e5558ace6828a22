"""Resumable training checkpoints: safetensors tensors plus JSON metadata, never a pickle.

One file holds the model weights under their own names (so `hgpose.model.load_model` reads it like
any weights file), the optimizer's tensors under `optimizer.<param>.<name>`, torch's CPU RNG state, and
a JSON header entry with everything else (epoch, position in the epoch, LR-rule state, metric history,
numpy's and Python's global RNG states).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from hgpose.model.weights import CONFIG_METADATA_KEY, check_tensor_shapes, read_model_config
from hgpose.runtime.files import UserError, atomic_path

STATE_METADATA_KEY = "hgpose_train_state"
OPTIMIZER_PREFIX = "optimizer."
RNG_KEY = "rng.torch_cpu"
HOST_RNG_KEY = "host_rng"  # in the JSON state: numpy's and Python's global RNG states


def host_rng_state() -> dict:
    """numpy's and Python's global RNG states as JSON. Training draws nothing from them today, but a
    data op or a library that did would otherwise make a resumed run drift from an uninterrupted one."""
    key, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    version, internal, gauss_next = random.getstate()
    return {"numpy": [key, keys.tolist(), pos, has_gauss, cached], "python": [version, list(internal), gauss_next]}


def set_host_rng_state(state: dict) -> None:
    key, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((key, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def _unwrap(model):
    return getattr(model, "module", model)


def save_training_checkpoint(path: str | Path, model, optimizer: torch.optim.Optimizer, state: dict) -> Path:
    module = _unwrap(model)
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    opt_state = optimizer.state_dict()
    scalars: dict[str, dict] = {}
    for param_id, entries in opt_state["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{OPTIMIZER_PREFIX}{param_id}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(param_id), {})[name] = value
    tensors[RNG_KEY] = torch.get_rng_state()
    metadata = {
        CONFIG_METADATA_KEY: module.config.to_json(),
        STATE_METADATA_KEY: json.dumps({**state, "optimizer_param_groups": opt_state["param_groups"],
                                        "optimizer_scalars": scalars, HOST_RNG_KEY: host_rng_state()}),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


STATE_KEYS = {"epoch": int, "step_in_epoch": int, "partial": dict, "schedule": dict, "history": list,
              "optimizer_param_groups": list, "optimizer_scalars": dict}


def read_training_state(path: str | Path) -> dict:
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as exc:
        raise UserError(f"{path}: not a readable training checkpoint ({exc})") from None
    if STATE_METADATA_KEY not in metadata:
        raise UserError(f"{path}: has no training state (a weights-only file cannot be resumed)")
    try:
        state = json.loads(metadata[STATE_METADATA_KEY])
    except ValueError as exc:
        raise UserError(f"{path}: corrupt training state (not JSON: {exc})") from None
    if not isinstance(state, dict):
        raise UserError(f"{path}: corrupt training state (not a JSON object)")
    for key, kind in STATE_KEYS.items():
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            raise UserError(f"{path}: corrupt training state ({key!r} missing or not a {kind.__name__})")
    return state


def load_training_checkpoint(path: str | Path, model, optimizer: torch.optim.Optimizer) -> dict:
    """Restore model, optimizer and RNG states (torch's, and numpy's and Python's where the file has
    them: files written before they were saved have not) in place; return the JSON state.

    Everything is checked against the model before a tensor is read (names, shapes, dtypes), so a
    wrong, corrupt or hostile file is a one-line UserError and never a large allocation.
    """
    path = Path(path)
    module = _unwrap(model)
    config = read_model_config(path)
    if config != module.config:
        raise UserError(f"{path}: checkpoint model config {config} differs from the run's {module.config}")
    check_tensor_shapes(path, config)
    state = read_training_state(path)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    with safe_open(str(path), framework="pt") as f:
        _check_extra_tensors(path, f, params)
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    try:
        module.load_state_dict({k: tensors[k] for k in module.state_dict()})
        opt_state: dict[int, dict] = {}
        for key, value in tensors.items():
            if key.startswith(OPTIMIZER_PREFIX):
                param_id, name = key[len(OPTIMIZER_PREFIX) :].split(".", 1)
                opt_state.setdefault(int(param_id), {})[name] = value
        for param_id, entries in state.pop("optimizer_scalars").items():
            opt_state.setdefault(int(param_id), {}).update(entries)
        optimizer.load_state_dict({"state": opt_state, "param_groups": state.pop("optimizer_param_groups")})
        _match_parameter_layouts(optimizer)
        torch.set_rng_state(tensors[RNG_KEY])
        host_rng = state.pop(HOST_RNG_KEY, None)
        if host_rng is not None:
            set_host_rng_state(host_rng)
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError, OverflowError) as exc:
        raise UserError(f"{path}: corrupt training state ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    return state


def _match_parameter_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each optimizer state tensor its parameter's memory layout (channels-last for convolution
    weights), as in the run that saved it: files store them contiguous, and an elementwise update
    over mixed layouts takes a different (non-vectorised) kernel path, whose rounding can differ on
    some CPUs, so a resumed run could drift from an uninterrupted one."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            entries = optimizer.state.get(param, {})
            for name, value in entries.items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    entries[name] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def _check_extra_tensors(path: Path, f, params: list[torch.Tensor]) -> None:
    """Optimizer tensors must belong to a parameter and have its shape (or be a scalar); the RNG
    state must have the size of this torch's."""
    for key in f.keys():
        if key == RNG_KEY:
            expected = (tuple(torch.get_rng_state().shape), "U8")
            found = (tuple(f.get_slice(key).get_shape()), f.get_slice(key).get_dtype())
            if found != expected:
                raise UserError(f"{path}: corrupt training state (RNG state {found}, expected {expected})")
        elif key.startswith(OPTIMIZER_PREFIX):
            param_id, _, name = key[len(OPTIMIZER_PREFIX) :].partition(".")
            if not (param_id.isdigit() and int(param_id) < len(params) and name):
                raise UserError(f"{path}: corrupt training state (optimizer tensor {key} matches no parameter)")
            shape = tuple(f.get_slice(key).get_shape())
            if shape not in ((), tuple(params[int(param_id)].shape)):
                raise UserError(f"{path}: corrupt training state (optimizer tensor {key} has shape {list(shape)}, "
                                f"its parameter {list(params[int(param_id)].shape)})")
    if RNG_KEY not in f.keys():
        raise UserError(f"{path}: corrupt training state (no RNG state)")
