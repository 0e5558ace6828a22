"""Runs survive any kill and never mix: real SIGKILL/SIGTERM, a second writer, a real full disk,
left-over temp files, and runs that must stop (no readable sample, divergence, non-finite validation)."""

import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import hgpose.train.loop as train_module
from conftest import mounted_tmpfs
from hgpose.cli import main
from hgpose.model.weights import load_model
from hgpose.runtime.files import UserError
from hgpose.train.loop import train
from hgpose.train.run_dir import RunLog
from test_train import TINY_FLAGS, TRAIN_COMMAND, quick_config, read_metrics, resume_and_compare, subprocess_env

EPOCHS = 3


def training_args(data, out: Path) -> list[str]:
    return ["--data", str(data), "--out", str(out), "--epochs", str(EPOCHS), "--batch-size", "8", "--workers", "0",
            "--cache", "off", "--no-progress", "--no-report", *TINY_FLAGS]


def start(data, out: Path, **popen) -> subprocess.Popen:
    popen.setdefault("stdout", subprocess.DEVNULL)
    popen.setdefault("stderr", subprocess.DEVNULL)
    return subprocess.Popen([*TRAIN_COMMAND, *training_args(data, out)], env=subprocess_env(), **popen)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None and time.time() < deadline, f"training ended before {path.name} appeared"
        time.sleep(0.01)


def wait_until_locked(lock_file: Path, proc: subprocess.Popen) -> None:
    """Until another process holds the lock (a POSIX lockf lock) on lock_file."""
    import fcntl

    wait_for(lock_file, proc)
    while True:
        with open(lock_file, "r+") as f:
            try:
                fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return
            fcntl.lockf(f, fcntl.LOCK_UN)
        assert proc.poll() is None
        time.sleep(0.01)


@pytest.mark.slow
def test_sigkill_in_epoch_1_before_any_checkpoint_resumes_bit_identical(synth_dataset, reference_run, tmp_path):
    killed = tmp_path / "killed"
    proc = start(synth_dataset, killed)
    wait_for(killed / "config.yaml", proc)  # config.yaml is written as training starts
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "last.safetensors").exists(), "the kill landed after the first checkpoint"
    resume_and_compare(killed, reference_run)  # --resume starts it at epoch 1; the kernel dropped the lock


@pytest.mark.slow
def test_sigkill_right_after_start_leaves_a_directory_that_starts_again(synth_dataset, tmp_path, capsys):
    run_dir = tmp_path / "early"
    proc = start(synth_dataset, run_dir)
    wait_until_locked(run_dir / ".lock", proc)  # the first thing train does
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if not (run_dir / "config.yaml").exists():  # killed before training began: --out starts it afresh
        assert main(["train", "--resume", str(run_dir)]) == 2
        assert "start it again with --out" in capsys.readouterr().err
        assert main(["train", *training_args(synth_dataset, run_dir), "--epochs", "1"]) == 0
    else:  # the kill landed after config.yaml: --resume carries on
        assert main(["train", "--resume", str(run_dir), "--epochs", "1", "--no-report"]) == 0
    assert len(read_metrics(run_dir)) == 1


@pytest.mark.slow
def test_sigterm_saves_mid_epoch_and_the_printed_command_resumes_it(synth_dataset, reference_run, tmp_path, capsys):
    run_dir = tmp_path / "terminated"
    proc = start(synth_dataset, run_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # one run directory, one writer: while it trains, a second `train --out` and a `--resume` are refused
    wait_until_locked(run_dir / ".lock", proc)
    assert main(["train", *training_args(synth_dataset, run_dir)]) == 2
    assert "another hgpose train is writing" in capsys.readouterr().err
    wait_for(run_dir / "config.yaml", proc)
    assert main(["train", "--resume", str(run_dir), "--no-report"]) == 2
    err = capsys.readouterr().err
    assert "another hgpose train is writing" in err and len(err.strip().splitlines()) == 1

    wait_for(run_dir / "checkpoints" / "epoch_001.safetensors", proc)
    proc.send_signal(signal.SIGTERM)  # what `timeout` and job schedulers send
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output  # saved and resumable, but not a finished run: never a silent 0
    printed = output.split("resume with:")[1].strip().splitlines()[0]
    assert printed.startswith("hgpose train --resume ")
    # run it as printed, from another directory, with the environment's scripts on PATH
    env = subprocess_env() | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    resumed = subprocess.run(printed + " --no-report", shell=True, env=env, cwd=tmp_path, capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr
    a, b = (load_model(r / "last.safetensors").state_dict() for r in (reference_run, run_dir))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["val_pck"] for r in read_metrics(run_dir)] == [r["val_pck"] for r in read_metrics(reference_run)]


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 3 MB file system that fills up; skipped where mounting is not allowed."""
    with mounted_tmpfs(tmp_path / "small_disk", "3m") as mount_point:
        yield mount_point


@pytest.mark.slow
def test_full_disk_is_one_line_keeps_earlier_checkpoints_and_resume_works_after(synth_dataset, reference_run,
                                                                                small_tmpfs):
    run_dir = small_tmpfs / "run"
    proc = start(synth_dataset, run_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    error = [line for line in err.splitlines() if line.startswith("hgpose train: error:")]  # the rest: loading
    assert len(error) == 1 and str(small_tmpfs) in error[0] and "No space left" in error[0], err
    assert "Traceback" not in err and err.rstrip().endswith(error[0])
    saved = sorted(run_dir.glob("checkpoints/epoch_*.safetensors"))
    assert saved, "the disk filled before the first epoch's checkpoint"
    for path in saved:
        load_model(path)  # every checkpoint that exists is complete
    assert not [p for p in run_dir.rglob(".*") if p.name != ".lock"], "temporary files left behind"
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_tmpfs)], check=True)  # space freed
    resume_and_compare(run_dir, reference_run)


def test_a_full_disk_while_writing_train_log_is_one_line(small_tmpfs):
    with open(small_tmpfs / "filler", "wb") as f:
        try:
            f.write(b"\0" * (4 << 20))
        except OSError:
            pass
    log = RunLog(small_tmpfs / "train.log")
    with pytest.raises(UserError, match=r"train\.log: cannot write \(No space left on device\)"):
        log("x" * 100_000)


def test_leftover_temp_files_are_swept_and_checkpoints_get_normal_permissions(synth_dataset, tmp_path):
    run_dir = train(quick_config(synth_dataset, tmp_path / "run", epochs=1, subset=16))
    leftovers = [run_dir / ".hgpose-tmp-last.safetensors.k3j2h1", run_dir / "checkpoints" / ".hgpose-tmp-x9y8z7"]
    leftovers[0].mkdir()
    (leftovers[0] / ".tmpAb12Cd").write_bytes(b"half a checkpoint")  # safetensors' own temp file, inside ours
    leftovers[1].write_bytes(b"half a checkpoint")
    users = [run_dir / ".notes.tmp", run_dir / ".tmpAb12Cd"]  # names hgpose never gives: not ours to delete
    for path in users:
        path.write_bytes(b"the user's")
    train(quick_config(synth_dataset, tmp_path / "run", epochs=2, subset=16), resume=run_dir)
    assert not any(p.exists() for p in leftovers)
    assert all(p.read_bytes() == b"the user's" for p in users)
    mode = stat.S_IMODE((run_dir / "metrics.csv").stat().st_mode)
    for name in ("last.safetensors", "best.safetensors", "checkpoints/epoch_002.safetensors"):
        assert stat.S_IMODE((run_dir / name).stat().st_mode) == mode, name


def test_inf_in_a_batch_norm_buffer_stops_the_run_and_is_never_saved_as_best(synth_dataset, tmp_path, monkeypatch):
    # training mode normalises with batch statistics, so an inf running_var keeps the loss finite
    real_step, calls = train_module.train_step, {"n": 0}

    def diverging_step(model, *args, **kwargs):
        calls["n"] += 1
        loss = real_step(model, *args, **kwargs)
        if calls["n"] > steps_per_epoch:
            getattr(model, "module", model).stem_bn.running_var.fill_(float("inf"))
        return loss

    config = quick_config(synth_dataset, tmp_path / "run", epochs=3, subset=16)
    steps_per_epoch = -(-16 // config.batch_size)
    monkeypatch.setattr(train_module, "train_step", diverging_step)
    with pytest.raises(UserError, match=r"stem_bn\.running_var holds NaN or infinite values in epoch 2"):
        train(config)
    run_dir = tmp_path / "run"
    assert [int(r["epoch"]) for r in read_metrics(run_dir)] == [1]
    best = load_model(run_dir / "best.safetensors").state_dict()
    assert all(torch.isfinite(v).all() for v in best.values() if v.is_floating_point())
    assert not (run_dir / "checkpoints" / "epoch_002.safetensors").exists()


def test_a_non_finite_val_pck_stops_the_run(synth_dataset, tmp_path, monkeypatch):
    real_pck = train_module.pck

    def nan_pck(*args, **kwargs):
        result = real_pck(*args, **kwargs)
        result.overall = float("nan")
        return result

    monkeypatch.setattr(train_module, "pck", nan_pck)
    with pytest.raises(UserError, match="validation gave a non-finite result.* in epoch 1"):
        train(quick_config(synth_dataset, tmp_path / "run", epochs=2, subset=16))
    assert not (tmp_path / "run" / "best.safetensors").exists()
    assert not (tmp_path / "run" / "last.safetensors").exists()


def test_unreadable_training_samples_are_reported_at_the_start_and_in_train_log(tiny_coco, tmp_path, capsys):
    for i in range(12):
        image_id = tiny_coco.add_image(write=i not in (0, 1))
        tiny_coco.add_person(image_id)
    root = tiny_coco.write("train2017")
    shutil.copy(tiny_coco.annotation_file("train2017"), tiny_coco.annotation_file("val2017"))
    shutil.copytree(root / "train2017", root / "val2017")
    run_dir = train(quick_config(root, tmp_path / "run", epochs=1, val_split="val2017"))
    log = (run_dir / "train.log").read_text().splitlines()
    assert any("train2017: kept 12 instances" in li for li in log)  # the kept/dropped summary is logged too
    at = next(i for i, li in enumerate(log) if "training samples in 2 unusable images skipped" in li)
    line = log[at]
    assert line.startswith("2 training samples") and "000000000001.jpg: missing file" in line
    assert at < next(i for i, li in enumerate(log) if li.startswith("epoch"))  # at the start
    assert line in capsys.readouterr().out


def test_an_epoch_without_any_readable_training_sample_stops_with_one_line(tiny_coco, tmp_path):
    for _ in range(6):
        tiny_coco.add_person(tiny_coco.add_image(write=False))
    root = tiny_coco.write("train2017")
    tiny_coco.write("val2017")
    with pytest.raises(UserError):
        train(quick_config(root, tmp_path / "run", epochs=1, val_split="val2017"))
    assert not (tmp_path / "run" / "best.safetensors").exists()


def test_an_epoch_ending_in_one_sample_at_a_1x1_bottleneck_trains(synth_dataset, tmp_path):
    # N training instances in batches of N - 1 end in a batch of one; depth 4 on 64 px crops makes the
    # innermost maps 1x1, where batch norm cannot train on one sample (PyTorch raises)
    from hgpose.data.coco import build_splits
    from hgpose.model.hourglass import ModelConfig

    n_train = len(build_splits(str(synth_dataset), seed=0)["train"])
    run_dir = train(quick_config(synth_dataset, tmp_path / "run", epochs=1, batch_size=n_train - 1,
                                 model=ModelConfig(features=32, input_size=64)))
    assert "that sample is left out of each epoch" in (run_dir / "train.log").read_text()
    assert len(read_metrics(run_dir)) == 1


def test_a_full_disk_while_writing_the_report_is_one_line(reference_run, small_tmpfs):
    from hgpose.report import write_report

    run_dir = small_tmpfs / "run"
    skipped = shutil.ignore_patterns("*.safetensors", "figure2.*", "table1.*", ".lock")
    shutil.copytree(reference_run, run_dir, ignore=skipped)
    with open(small_tmpfs / "filler", "wb") as f:  # leaves the disk full
        try:
            f.write(b"\0" * (4 << 20))
        except OSError:
            pass
    with pytest.raises(UserError, match=r"figure2\.png: cannot write \(No space left on device\)"):
        write_report(run_dir)
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")], "temporary files left behind"
    (small_tmpfs / "filler").unlink()
    assert (write_report(run_dir)["figure2.png"]).stat().st_size > 0
