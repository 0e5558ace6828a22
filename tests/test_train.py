"""Training: run directory, per-epoch files, learning, exact resume after SIGKILL, torchrun, faults."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import hgpose.train.loop as train_module
from hgpose.cli import main
from hgpose.model.hourglass import ModelConfig
from hgpose.model.weights import load_model
from hgpose.runtime.files import UserError
from hgpose.train.config import TrainConfig
from hgpose.train.loop import train

TINY = ModelConfig(depth=2, features=32, input_size=64)
TINY_FLAGS = ["--depth", "2", "--features", "32", "--input-size", "64"]


def quick_config(data, out, **overrides) -> TrainConfig:
    options = dict(data=str(data), out=str(out) if out else None, epochs=2, batch_size=8, workers=0, progress=False,
                   cache="off", model=TINY)
    return TrainConfig(**(options | overrides))


def read_metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def subprocess_env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    env.pop("WORLD_SIZE", None)
    return env


def test_run_directory_has_config_metrics_and_a_checkpoint_per_epoch(synth_dataset, tmp_path):
    run_dir = train(quick_config(synth_dataset, tmp_path / "run", epochs=2))
    rows = read_metrics(run_dir)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert set(rows[0]) >= {"epoch", "lr", "train_loss", "val_loss", "val_pck", "epoch_seconds"}
    assert all(float(r["train_loss"]) > 0 and 0 <= float(r["val_pck"]) <= 1 for r in rows)
    for epoch in (1, 2):
        model = load_model(run_dir / "checkpoints" / f"epoch_{epoch:03d}.safetensors")
        assert model.config == TINY
    assert (run_dir / "best.safetensors").is_file() and (run_dir / "last.safetensors").is_file()
    assert (run_dir / "config.yaml").is_file() and "epoch   2" in (run_dir / "train.log").read_text()
    assert not list(run_dir.rglob("*.tmp")), "a temporary file was left behind"
    # best = the epoch with the highest val PCK
    best_epoch = max(rows, key=lambda r: float(r["val_pck"]))["epoch"]
    best = load_file(str(run_dir / "best.safetensors"))
    chosen = load_file(str(run_dir / "checkpoints" / f"epoch_{int(best_epoch):03d}.safetensors"))
    assert all(torch.equal(best[k], chosen[k]) for k in chosen)


def test_default_run_names_increment(synth_dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = train(quick_config(synth_dataset, None, epochs=1, subset=16))
    second = train(quick_config(synth_dataset, None, epochs=1, subset=16))
    assert (first.name, second.name) == ("train", "train2")


@pytest.mark.slow
def test_short_cpu_training_lowers_the_loss_and_reaches_a_useful_pck(synth_learnable, tmp_path):
    # the seed's architecture at quarter width on 64x64 crops, batch 16, RMSProp (lr raised to learn in
    # ~30 s); about 7,500 samples seen. The untrained model's PCK is ~0.01.
    config = quick_config(synth_learnable, tmp_path / "run", epochs=22, batch_size=16, lr=2e-3,
                          model=ModelConfig(features=64, input_size=64), precision="auto")
    run_dir = train(config)
    rows = read_metrics(run_dir)
    losses = [float(r["train_loss"]) for r in rows]
    pcks = [float(r["val_pck"]) for r in rows]
    assert losses[-1] < 0.8 * losses[1], losses  # epoch 1 is dominated by the init's large outputs
    assert max(pcks) > 0.2 and max(pcks) > 5 * pcks[0], pcks


TRAIN_COMMAND = [sys.executable, "-m", "hgpose", "train"]


def start_training(data, out: Path, batch_size: int, **popen) -> subprocess.Popen:
    args = ["--data", str(data), "--out", str(out), "--epochs", "3", "--batch-size", str(batch_size),
            "--workers", "0", "--cache", "off", "--no-progress", "--no-report", *TINY_FLAGS]
    return subprocess.Popen([*TRAIN_COMMAND, *args], env=subprocess_env(), **popen)


# `hgpose train` whose training step pauses once, right after the first step of epoch 2, until the file
# `release` exists: a signal sent while it waits lands mid-epoch 2 on any machine, fast or slow.
PAUSING_TRAIN = """
import sys, time
from pathlib import Path
import hgpose.train.loop as loop
run_dir, paused, release = (Path(p) for p in sys.argv[1:4])
real_step = loop.train_step
def step_then_pause(*args, **kwargs):
    loss = real_step(*args, **kwargs)
    if (run_dir / "checkpoints" / "epoch_001.safetensors").exists() and not paused.exists():
        paused.touch()
        while not release.exists():  # a signal handler runs between these sleeps
            time.sleep(0.01)
    return loss
loop.train_step = step_then_pause
from hgpose.cli import main
sys.exit(main(["train", *sys.argv[4:]]))
"""


def start_paused_training(args: list[str], run_dir: Path, **popen) -> tuple[subprocess.Popen, Path, Path]:
    """Start `hgpose train ARGS` (its --out is run_dir) that pauses after epoch 2's first step; returns
    the process and the marker files (paused: it waits now; release: create it to let it go on)."""
    paused, release = run_dir.parent / f"{run_dir.name}.paused", run_dir.parent / f"{run_dir.name}.release"
    proc = subprocess.Popen([sys.executable, "-c", PAUSING_TRAIN, str(run_dir), str(paused), str(release), *args],
                            env=subprocess_env(), **popen)
    return proc, paused, release


def wait_until_paused(proc: subprocess.Popen, paused: Path) -> None:
    """Until the training started by start_paused_training waits inside epoch 2 (a hang's deadline only)."""
    deadline = time.monotonic() + 300
    while not paused.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "training ended before it could be stopped"
        time.sleep(0.02)


def resume_and_compare(run_dir: Path, reference: Path) -> None:
    """Resume run_dir to the end: weights, optimizer, RNG and metrics must equal the reference's."""
    resumed = subprocess.run([*TRAIN_COMMAND, "--resume", str(run_dir), "--no-report"], env=subprocess_env(),
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    a, b = load_file(str(reference / "last.safetensors")), load_file(str(run_dir / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in rows]  # noqa: E731
    assert strip(read_metrics(reference)) == strip(read_metrics(run_dir))


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(synth_dataset, reference_run, tmp_path):
    reference, killed = reference_run, tmp_path / "killed"
    args = ["--data", str(synth_dataset), "--out", str(killed), "--epochs", "3", "--batch-size", "8",
            "--workers", "0", "--cache", "off", "--no-progress", "--no-report", *TINY_FLAGS]
    proc, paused, _ = start_paused_training(args, killed, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until_paused(proc, paused)  # one step into epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(read_metrics(killed)) == 1, "the kill must land in epoch 2"
    resume_and_compare(killed, reference)


@pytest.mark.slow
def test_ctrl_c_saves_a_resumable_checkpoint_and_resume_matches(synth_dataset, tmp_path):
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    assert start_training(synth_dataset, reference, 4, stdout=subprocess.DEVNULL).wait() == 0
    args = ["--data", str(synth_dataset), "--out", str(interrupted), "--epochs", "3", "--batch-size", "4",
            "--workers", "0", "--cache", "off", "--no-progress", "--no-report", *TINY_FLAGS]
    proc, paused, release = start_paused_training(args, interrupted, stdout=subprocess.PIPE,
                                                  stderr=subprocess.STDOUT, text=True)
    wait_until_paused(proc, paused)
    proc.send_signal(signal.SIGINT)  # mid-epoch 2: the step finishes, the run saves where it is and stops
    release.touch()
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output
    assert "interrupted at epoch 2, step 1/" in output and "hgpose train --resume" in output
    resume_and_compare(interrupted, reference)


@pytest.mark.slow
def test_torchrun_two_cpu_processes_train_one_epoch(synth_dataset, tmp_path):
    run_dir = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
           "-m", "hgpose", "train", "--data", str(synth_dataset), "--out", str(run_dir), "--epochs", "1",
           "--batch-size", "8", "--workers", "0", "--cache", "off", "--no-progress", "--no-report", *TINY_FLAGS]
    result = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_metrics(run_dir)
    assert len(rows) == 1 and float(rows[0]["train_loss"]) > 0
    assert (run_dir / "checkpoints" / "epoch_001.safetensors").is_file()
    assert "2 process(es)" in (run_dir / "train.log").read_text()
    assert (run_dir / "train.log").read_text().count("epoch   1") == 1  # only rank 0 writes
    assert len(list((run_dir / "tensorboard").glob("events.*"))) == 1  # TensorBoard too: rank 0 only


def test_nan_loss_stops_with_a_clear_message_and_keeps_earlier_checkpoints(synth_dataset, tmp_path, monkeypatch):
    real_loss, calls = train_module.heatmap_loss, {"n": 0}
    steps_per_epoch = None

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if calls["n"] > steps_per_epoch else loss

    config = quick_config(synth_dataset, tmp_path / "run", epochs=3)
    from hgpose.data.coco import build_splits

    n_train = len(build_splits(str(synth_dataset), seed=0)["train"])
    steps_per_epoch = -(-n_train // config.batch_size)
    monkeypatch.setattr(train_module, "heatmap_loss", poisoned)
    with pytest.raises(UserError, match="NaN or infinite in epoch 2"):
        train(config)
    run_dir = tmp_path / "run"
    assert len(read_metrics(run_dir)) == 1
    assert load_model(run_dir / "checkpoints" / "epoch_001.safetensors").config == TINY
    assert not (run_dir / "checkpoints" / "epoch_002.safetensors").exists()


def test_bad_resume_paths_and_conflicts_are_one_line_errors(synth_dataset, tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "nope")]) == 2
    assert "run directory not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["train", "--resume", str(tmp_path / "empty")]) == 2
    assert "not an hgpose run directory" in capsys.readouterr().err
    run_dir = train(quick_config(synth_dataset, tmp_path / "run", epochs=1, subset=16))
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir), "--lr", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "conflict" in err and "lr" in err and len(err.strip().splitlines()) == 1
    assert main(["train", "--resume", str(run_dir), "--features", "64"]) == 2
    assert "model config" in capsys.readouterr().err
    assert main(["train", "--data", str(synth_dataset), "--out", str(run_dir)]) == 2
    assert "already holds a run" in capsys.readouterr().err


@pytest.fixture(scope="module")
def synth_learnable(tmp_path_factory):
    """A generated dataset large enough to learn from in a short CPU run."""
    from hgpose.synth import generate_dataset

    out = tmp_path_factory.mktemp("learnable")
    generate_dataset(out, train_images=200, val_images=30, image_size=(192, 144), seed=1, progress=False)
    return out


@pytest.mark.slow
def test_torchrun_ranks_all_stop_when_rank_0_cannot_take_the_run(synth_dataset, tmp_path):
    import fcntl

    from hgpose.train.run_dir import LOCK_NAME

    run_dir = tmp_path / "busy"
    run_dir.mkdir()
    with open(run_dir / LOCK_NAME, "w") as held:  # another train writing there
        fcntl.lockf(held, fcntl.LOCK_EX)
        # a slow monitor: the agent would otherwise stop rank 1 itself once rank 0 has failed
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29519",
               "--monitor-interval", "5", "-m", "hgpose", "train", "--data", str(synth_dataset), "--out",
               str(run_dir), "--epochs", "1", "--workers", "0", "--cache", "off", "--no-progress", *TINY_FLAGS]
        result = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "another hgpose train is writing to this run directory" in result.stderr
    assert "not started: rank 0 could not take the run directory" in result.stderr, result.stderr[-3000:]
    assert not (run_dir / "config.yaml").exists()
