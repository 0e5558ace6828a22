"""Same machine, same numbers: what a bit-identical resume needs to find again, recorded in the run.

A resumed run equals an uninterrupted one bit for bit only when every kernel sums in the same order
and the same precision. What chooses that order on the CPU: the torch thread count (how a reduction
is split), the instruction sets the kernels were picked for (torch's CPU capability and oneDNN's
AVX2 / AVX-512 / AVX512-BF16 / AMX paths), the torch version (its kernels) and the precision that
ran (`--precision auto` is bf16 only where the hardware has it). On a GPU, the GPU model. The run
records them in run_info.json; a resume restores the thread count and names, in one line, whatever
else differs.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from hgpose.runtime.files import UserError, read_json
from hgpose.train.config import TrainConfig
from hgpose.train.run_info import RUN_INFO_FILE

MACHINE_KEY = "machine"  # in run_info.json
# /proc/cpuinfo flags that select different kernels (torch's dispatch and oneDNN's)
KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16",
                "amx_tile", "amx_bf16", "amx_fp16")
# the record's entries, as a resume names them
NAMES = {"torch_threads": "torch threads", "precision": "precision", "device": "device", "cpu": "CPU",
         "torch_version": "torch"}


def cpu_kind() -> dict:
    """The CPU's model name, torch's CPU capability (the vector code ATen dispatches to) and the
    kernel-selecting flags it has (Linux: /proc/cpuinfo; elsewhere the platform's processor name)."""
    name, flags = None, set()
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and name is None:
            name = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "unknown")()
    return {"model": name or platform.processor() or platform.machine(), "capability": capability,
            "flags": [f for f in KERNEL_FLAGS if f in flags]}


def machine_record(device: torch.device, precision: str) -> dict:
    """What this process trains with, as run_info.json records it."""
    on_gpu = device.type == "cuda"
    return {"torch_threads": torch.get_num_threads(), "precision": precision,
            "device": f"cuda: {torch.cuda.get_device_name(device)}" if on_gpu else device.type,
            "cpu": cpu_kind(), "torch_version": torch.__version__}


def recorded_machine(run_dir: Path) -> dict | None:
    """The machine record of a run, or None for a run that has none (older runs; a damaged file is
    the report's business, not a reason to refuse a resume)."""
    info_file = Path(run_dir) / RUN_INFO_FILE
    try:
        info = read_json(info_file, "run info") if info_file.is_file() else None
    except UserError:
        return None
    record = info.get(MACHINE_KEY) if isinstance(info, dict) else None
    return record if isinstance(record, dict) else None


def thread_source(config: TrainConfig) -> str | None:
    """Who chose the thread count explicitly: --threads, OMP_NUM_THREADS, or nobody (None)."""
    if config.threads is not None:
        return "--threads"
    if os.environ.get("OMP_NUM_THREADS"):
        return "OMP_NUM_THREADS"
    return None


def set_thread_count(config: TrainConfig, recorded: dict | None) -> str | None:
    """torch's thread count for this process: --threads N when given, else on a resume the count the
    run recorded unless OMP_NUM_THREADS is set (then torch's own choice). Returns a line to log when
    the recorded count was restored."""
    if config.threads is not None:
        torch.set_num_threads(config.threads)
        return None
    wanted = recorded.get("torch_threads") if recorded else None
    if thread_source(config) or not isinstance(wanted, int) or isinstance(wanted, bool) or wanted < 1:
        return None
    if wanted == torch.get_num_threads():
        return None
    torch.set_num_threads(wanted)
    return (f"torch threads: {torch.get_num_threads()}, as the run recorded (a bit-identical resume needs them; "
            "--threads N or OMP_NUM_THREADS choose another count)")


def machine_differences(recorded: dict | None, current: dict, thread_source: str | None = None) -> list[str]:
    """The recorded entries that differ now, as 'torch 2.13.0 (run: 2.12.0)'; the thread count says
    who set it (`thread_source`) when someone did."""
    if not recorded:
        return []
    differences = []
    for key, name in NAMES.items():
        if recorded.get(key) != current[key]:
            by = f", set by {thread_source}" if key == "torch_threads" and thread_source else ""
            differences.append(f"{name} {_shown(current[key])} (run: {_shown(recorded.get(key))}{by})")
    return differences


def difference_line(run_dir: Path, differences: list[str]) -> str:
    """One line naming what breaks bit-identity with the run's start."""
    return (f"{run_dir}: not the same machine as the run's start, so this resume will not be bit-identical "
            f"to an uninterrupted run: {'; '.join(differences)}")


def _shown(value) -> str:
    if isinstance(value, dict):  # the CPU: its name and what differs in kind
        flags = ",".join(value.get("flags", [])) or "none"
        return f"{value.get('model')} [{value.get('capability')}; {flags}]"
    return str(value)
