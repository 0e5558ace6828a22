"""Resumable training checkpoints: safetensors tensors plus JSON metadata, never a pickle.

One file holds the model weights under their own names (so `hgpose.model.load_model` reads it like
any weights file), the optimizer's tensors under `optimizer.<param>.<name>`, the RNG state, and a
JSON header entry with everything else (epoch, position in the epoch, LR-rule state, metric history).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from hgpose.fileio import UserError, atomic_path
from hgpose.model import CONFIG_METADATA_KEY

STATE_METADATA_KEY = "hgpose_train_state"
OPTIMIZER_PREFIX = "optimizer."
RNG_KEY = "rng.torch_cpu"


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
        STATE_METADATA_KEY: json.dumps(
            {**state, "optimizer_param_groups": opt_state["param_groups"], "optimizer_scalars": scalars}
        ),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def read_training_state(path: str | Path) -> dict:
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as exc:
        raise UserError(f"{path}: not a readable training checkpoint ({exc})") from None
    if STATE_METADATA_KEY not in metadata:
        raise UserError(f"{path}: has no training state (a weights-only file cannot be resumed)")
    return json.loads(metadata[STATE_METADATA_KEY])


def load_training_checkpoint(path: str | Path, model, optimizer: torch.optim.Optimizer) -> dict:
    """Restore model, optimizer and RNG in place; return the JSON state."""
    state = read_training_state(path)
    tensors = load_file(str(path), device="cpu")
    module = _unwrap(model)
    module.load_state_dict({k: tensors[k] for k in module.state_dict()})
    opt_state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith(OPTIMIZER_PREFIX):
            param_id, name = key[len(OPTIMIZER_PREFIX) :].split(".", 1)
            opt_state.setdefault(int(param_id), {})[name] = value
    for param_id, entries in state.pop("optimizer_scalars").items():
        opt_state.setdefault(int(param_id), {}).update(entries)
    optimizer.load_state_dict({"state": opt_state, "param_groups": state.pop("optimizer_param_groups")})
    torch.set_rng_state(tensors[RNG_KEY])
    return state
