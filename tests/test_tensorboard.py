"""TensorBoard curves: a run's event files, read back with TensorBoard's own reader, hold exactly the
metrics.csv rows (each epoch once), also after a SIGKILL at any point of an epoch and a resume."""

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hgpose.train.loop import train
from hgpose.train.tensorboard import CROPS, IMAGES_PER_SECOND, SCALARS, TENSORBOARD_DIR
from test_train import TINY_FLAGS, TRAIN_COMMAND, quick_config, read_metrics, subprocess_env

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def read_events(run_dir: Path) -> event_accumulator.EventAccumulator:
    events = event_accumulator.EventAccumulator(str(run_dir / TENSORBOARD_DIR), size_guidance={"scalars": 0,
                                                                                             "images": 0})
    events.Reload()
    return events


def assert_events_equal_metrics(run_dir: Path) -> None:
    rows = read_metrics(run_dir)
    events = read_events(run_dir)
    for column, tag in SCALARS:
        logged = [(e.step, e.value) for e in events.Scalars(tag)]
        expected = [(int(r["epoch"]), float(r[column])) for r in rows]
        assert [s for s, _ in logged] == [s for s, _ in expected], f"{tag}: steps {logged} vs metrics.csv {expected}"
        for (step, value), (_, want) in zip(logged, expected):  # TensorBoard stores float32
            assert value == pytest.approx(want, rel=1e-6, abs=1e-12), f"{tag} at epoch {step}: {value} vs {want}"
    assert [e.step for e in events.Scalars(IMAGES_PER_SECOND)] == [int(r["epoch"]) for r in rows]
    assert all(e.value > 0 for e in events.Scalars(IMAGES_PER_SECOND))
    assert [e.step for e in events.Images(CROPS)] == [int(r["epoch"]) for r in rows]


def test_a_run_logs_every_metrics_row_and_validation_crops(synth_dataset, tmp_path):
    run_dir = train(quick_config(synth_dataset, tmp_path / "run", epochs=2, subset=16))
    assert_events_equal_metrics(run_dir)
    image = read_events(run_dir).Images(CROPS)[0]
    assert image.height == 64 and image.width == 64 * 2  # both validation crops, side by side, at input size


def test_no_tensorboard_writes_no_event_files(synth_dataset, tmp_path):
    run_dir = train(quick_config(synth_dataset, tmp_path / "run", epochs=1, subset=16, tensorboard=False))
    assert not (run_dir / TENSORBOARD_DIR).exists()


# `hgpose train` that is SIGKILLed right after TensorBoard has flushed epoch 2's events, before that
# epoch's resume point is saved: the resume redoes epoch 2, whose first events must not count twice
KILLED_AFTER_EVENTS = """
import os, signal, sys
import hgpose.train.tensorboard as tb
real_epoch = tb.TensorBoardLog.epoch
def epoch_then_die(self, row, *args):
    real_epoch(self, row, *args)
    if row["epoch"] == 2:
        os.kill(os.getpid(), signal.SIGKILL)
tb.TensorBoardLog.epoch = epoch_then_die
from hgpose.cli import main
sys.exit(main(["train", *sys.argv[1:]]))
"""


@pytest.mark.slow
def test_events_equal_metrics_after_a_sigkill_between_events_and_checkpoint(synth_dataset, tmp_path):
    run_dir = tmp_path / "killed"
    args = ["--data", str(synth_dataset), "--out", str(run_dir), "--epochs", "3", "--batch-size", "8",
            "--subset", "24", "--workers", "0", "--cache", "off", "--no-progress", "--no-report", *TINY_FLAGS]
    killed = subprocess.run([sys.executable, "-c", KILLED_AFTER_EVENTS, *args], env=subprocess_env(),
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert [int(r["epoch"]) for r in read_metrics(run_dir)] == [1], "the kill must land before epoch 2's checkpoint"
    resumed = subprocess.run([*TRAIN_COMMAND, "--resume", str(run_dir), "--no-report"], env=subprocess_env(),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [int(r["epoch"]) for r in read_metrics(run_dir)] == [1, 2, 3]
    assert len(list((run_dir / TENSORBOARD_DIR).glob("events.*"))) == 2  # one per session
    assert_events_equal_metrics(run_dir)
