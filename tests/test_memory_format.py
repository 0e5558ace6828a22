"""The training step's memory layout follows the measured rule of hgpose.runtime.memory_format."""

import pytest
import torch

from hgpose.runtime.memory_format import preferred_memory_format


@pytest.mark.parametrize("capability", ["AVX2", "DEFAULT"])
def test_fp32_on_a_cpu_without_avx512_trains_in_nchw(monkeypatch, capability):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert preferred_memory_format("cpu", "fp32") == torch.contiguous_format
    assert preferred_memory_format("cpu", "bf16") == torch.channels_last


def test_avx512_cpus_and_cuda_train_channels_last(monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert preferred_memory_format("cpu", "fp32") == torch.channels_last
    assert preferred_memory_format("cpu", "bf16") == torch.channels_last
    assert preferred_memory_format("cuda", "fp32") == torch.channels_last

