"""Numeric precision of the forward pass: fp32, or bf16 autocast (losses stay in fp32)."""

from __future__ import annotations

import torch

from hgpose.runtime.files import UserError

PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" -> bf16 when the device computes it natively (Ampere+ GPUs, CPUs with AVX512-BF16/AMX),
    else fp32: on the demo bf16 reached the same PCK as fp32 (docs/performance.md) at less cost."""
    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        try:
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch < 2.4 has no emulation flag
            native = torch.cuda.is_bf16_supported()
        return "bf16" if native else "fp32"
    try:
        native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except (AttributeError, RuntimeError):  # a private op: absent in some builds
        native = False
    return "bf16" if native else "fp32"


def autocast(device: torch.device, precision: str):
    """The autocast context for a forward pass at `precision` (auto resolved for `device`)."""
    enabled = resolve_precision(precision, device) == "bf16" and device.type in ("cpu", "cuda")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)
