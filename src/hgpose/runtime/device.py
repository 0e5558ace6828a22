"""Choosing the torch device from a user's --device string (library code; the CLI re-uses it)."""

from __future__ import annotations

from hgpose.runtime.files import UserError


def resolve_device(name: str):
    """"auto" -> cuda when available, else cpu; anything else must be a device this machine has."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UserError(f"--device {name}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    return device
