"""Single-process or torchrun (DistributedDataParallel) execution, behind one small context.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; then each process takes one GPU (nccl) or, on a
CPU-only machine, runs on the CPU with the gloo backend.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

from hgpose.runtime.device import resolve_device


@dataclass
class DistContext:
    rank: int
    world_size: int
    device: torch.device

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.world_size == 1:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def all_reduce_sum(self, total: torch.Tensor, count: int) -> tuple[float, int]:
        """Sum a device scalar and a count over all processes (one host sync)."""
        packed = torch.stack([total.double(), torch.tensor(float(count), dtype=torch.float64, device=total.device)])
        if self.world_size > 1:
            torch_dist.all_reduce(packed)
        total_sum, total_count = packed.tolist()
        return total_sum, int(total_count)

    def any(self, flag: bool) -> bool:
        """True on every process when `flag` is true on any of them (so that all stop together)."""
        if self.world_size == 1:
            return flag
        packed = torch.tensor([float(flag)], device=self.device)
        torch_dist.all_reduce(packed, op=torch_dist.ReduceOp.MAX)
        return bool(packed.item())


def setup(device_name: str = "auto") -> DistContext:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistContext(0, 1, resolve_device(device_name))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistContext(torch_dist.get_rank(), torch_dist.get_world_size(), device)


def cleanup() -> None:
    if torch_dist.is_initialized():
        # every rank arrives before any tears down: a rank that exits while its peer is still shutting
        # down its connections can abort the peer (seen under load with gloo)
        torch_dist.barrier()
        torch_dist.destroy_process_group()
