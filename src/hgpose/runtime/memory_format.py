"""Which memory layout the training step uses on a device, by a measured rule.

Measurements (benchmarks/train_step.py, hgpose's eager step against the plain NCHW fp32 reference step):
- AVX2-only CPU, fp32, default model, 8 steps: channels-last 2.68 img/s, the plain NCHW step 3.13 img/s.
  Without AVX-512, oneDNN's fp32 channels-last convolutions lose to PyTorch's NCHW ones: NCHW there.
- Intel Xeon with AVX512-BF16 and AMX (busy with other jobs, one thread),
  demo model (128 features, 64x64 input), 20 steps: fp32 channels-last 11.85 img/s against NCHW 9.30;
  bf16 channels-last 19.03 against NCHW 11.67; default model, fp32, 3 steps: channels-last 2.90 img/s
  against NCHW 2.48 (reference 1.17). With AVX-512, channels-last wins in both precisions.
  (docs/demo.md, "Memory layout", has the full tables.)
- CUDA: channels-last is the tensor cores' native convolution layout (unchanged; not measured here).
bf16 on a CPU without AVX-512 is emulated and slow whatever the layout (--precision auto picks fp32
there); it keeps channels-last, the layout of its oneDNN kernels, as before this rule.
"""

from __future__ import annotations

import torch

from hgpose.runtime.precision import resolve_precision

# torch's names for the vector extensions its CPU kernels were dispatched to, from the weakest
NARROW_CPU_CAPABILITIES = ("DEFAULT", "NO AVX", "AVX", "AVX2", "ZVECTOR", "VSX", "SVE")


def preferred_memory_format(device, precision: str) -> torch.memory_format:
    """channels_last where it measured faster (CUDA; CPUs with AVX-512, in fp32 and bf16), NCHW for fp32
    on narrower CPUs, where channels-last measured slower than the plain step (module docstring)."""
    device = torch.device(device)
    if device.type != "cpu":
        return torch.channels_last
    narrow = torch.backends.cpu.get_cpu_capability() in NARROW_CPU_CAPABILITIES
    if narrow and resolve_precision(precision, device) == "fp32":
        return torch.contiguous_format
    return torch.channels_last
