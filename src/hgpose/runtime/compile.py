"""`--compile` modes of the training step: off, default (torch.compile) and reduce-overhead
(torch.compile with CUDA graphs).

At the seed's batch 16 a GPU step is short enough that launching its few hundred kernels one by
one is a large part of it; CUDA graphs replay the whole forward and backward as one launch. The
model's state (parameters, BN running statistics, optimizer) lives in the same tensors as in eager
mode, so checkpoints, resume and BN/optimizer semantics are unchanged. CUDA graphs exist only on
CUDA: on the CPU reduce-overhead runs as default.
"""

from __future__ import annotations

import torch

from hgpose.runtime.files import UserError

COMPILE_MODES = ("off", "default", "reduce-overhead")


def compile_mode(value) -> str:
    """A mode name from a config value; True/False are what `--compile` meant before modes existed."""
    if value is True:
        return "default"
    if value is False or value is None:
        return "off"
    if value not in COMPILE_MODES:
        raise UserError(f"--compile must be one of {', '.join(COMPILE_MODES)}, got {value!r}")
    return value


def effective_mode(mode: str, device) -> str:
    """The mode that runs on `device`: CUDA graphs need CUDA."""
    if mode == "reduce-overhead" and torch.device(device).type != "cuda":
        return "default"
    return mode


def compile_step_model(model, mode: str, device):
    """The model the training step calls, and whether each step must mark a new CUDA graph step."""
    mode = effective_mode(compile_mode(mode), device)
    if mode == "off":
        return model, False
    return torch.compile(model, mode=mode), mode == "reduce-overhead"


def begin_step(uses_graphs: bool) -> None:
    """Tell the CUDA graph trees a new training iteration starts (its outputs may be overwritten)."""
    if uses_graphs:
        torch.compiler.cudagraph_mark_step_begin()
