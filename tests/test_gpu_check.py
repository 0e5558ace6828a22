"""benchmarks/gpu_check.sh: one line without a GPU; its CPU parts run here so that it does not rot."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
STEPS = ("train_step", "data_pipeline", "synth", "prepare", "train", "evaluate", "export", "torchrun")


def _run(*args, timeout=600):
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the check would run")
def test_without_a_gpu_it_says_so_in_one_line(tmp_path):
    done = _run("--out", str(tmp_path))
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1 and "no CUDA GPU" in done.stderr
    assert not (tmp_path / "gpu_check.md").exists()


@pytest.mark.slow
def test_cpu_parts_run_and_write_one_markdown_file(tmp_path):
    done = _run("--cpu", "--quick", "--out", str(tmp_path))
    report = (tmp_path / "gpu_check.md").read_text()
    assert done.returncode == 0, report
    for name in STEPS:
        assert f"| {name} | ok |" in report
    assert "img/s" in report and "samples/s" in report and "val_pck" in report
    assert (tmp_path / "model.onnx").is_file() and (tmp_path / "run_torchrun" / "metrics.csv").is_file()
