"""`make demo` (hgpose.demo) at small sizes: Ctrl-C stops the demo itself, a rerun resumes, and an
interrupted and resumed demo ends with the same Table 1 and weights as an uninterrupted one."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hgpose.model.weights import load_model
from test_train import subprocess_env

# the demo's own code path (run_demo) at test sizes; --until-report stops after Table 1
SMALL_DEMO = ["--epochs", "3", "--train-images", "24", "--val-images", "8", "--features", "32", "--until-report"]


def demo(out: Path) -> list[str]:
    return [sys.executable, "-m", "hgpose.demo", "--out", str(out), *SMALL_DEMO]


def interrupt_when(path: Path, out: Path) -> str:
    """Start the demo, Ctrl-C it once `path` exists; the demo must stop (130) and say how to resume."""
    proc = subprocess.Popen(demo(out), env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    deadline = time.time() + 300
    while not path.exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, output[-3000:]
    assert "Traceback" not in output and "evaluating" not in output, output[-3000:]
    assert "again to resume it" in output
    assert "hgpose train --resume" not in output  # one resume command, the demo's own
    return output


@pytest.mark.slow
def test_a_finished_demo_run_again_reuses_every_step_and_says_so(tmp_path):
    out = tmp_path / "demo"
    first = subprocess.run(demo(out), env=subprocess_env(), capture_output=True, text=True)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert "precision: " in first.stdout and "figures (" in first.stdout and "reusing" not in first.stdout
    flipped = json.loads((out / "run" / "test_eval_flip.json").read_text())  # the demo shows the flip test too
    assert flipped["protocol"]["flip_test"] is True
    assert f"with the flip test: test PCK {flipped['pck']['all']['overall']:.3f}" in first.stdout
    assert "test PCK, flip test" in first.stdout
    evaluation = out / "run" / "test_eval.json"
    written = evaluation.stat().st_mtime_ns
    again = subprocess.run(demo(out), env=subprocess_env(), capture_output=True, text=True)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "reusing the finished run" in again.stdout
    assert "reusing " + str(evaluation) in again.stdout and "reusing the report" in again.stdout
    assert "reusing " + str(out / "run" / "test_eval_flip.json") in again.stdout
    assert evaluation.stat().st_mtime_ns == written
    # new weights are a changed input: the evaluation runs again
    best = out / "run" / "best.safetensors"
    other = next(c for c in sorted((out / "run" / "checkpoints").glob("epoch_*.safetensors"))
                 if c.read_bytes() != best.read_bytes())
    best.write_bytes(other.read_bytes())
    third = subprocess.run(demo(out), env=subprocess_env(), capture_output=True, text=True)
    assert third.returncode == 0, third.stdout[-2000:] + third.stderr[-2000:]
    assert "reusing " + str(evaluation) not in third.stdout and evaluation.stat().st_mtime_ns != written


@pytest.mark.slow
def test_interrupted_twice_and_resumed_demo_ends_with_the_same_table1(tmp_path):
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    done = subprocess.run(demo(reference), env=subprocess_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    run = interrupted / "run"
    interrupt_when(run / "config.yaml", interrupted)  # in epoch 1, before any checkpoint
    assert not (run / "best.safetensors").exists()
    interrupt_when(run / "checkpoints" / "epoch_002.safetensors", interrupted)  # the rerun resumed it
    resumed = subprocess.run(demo(interrupted), env=subprocess_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    def numbers(path: Path) -> str:  # Table 1 without the run's identity line (its dates differ)
        return "\n".join(line for line in path.read_text().splitlines() if not line.startswith("Run `"))

    table1 = numbers(reference / "run" / "table1.md").replace(str(reference), str(interrupted))
    assert "Best validation accuracy" in table1 and "Test PCK" in table1
    assert numbers(run / "table1.md") == table1  # the same numbers, epochs and test PCK
    a, b = (load_model(r / "run" / "last.safetensors").state_dict() for r in (reference, interrupted))
    assert all(torch.equal(a[k], b[k]) for k in a)
