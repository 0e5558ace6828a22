"""`hgpose train` never writes into what is not a run of ours, says every bad input in one line, lets a
run that never finished an epoch start again with new settings, and records the machine a
bit-identical resume needs (issue 21). Real folders, real files, real training runs."""

import json
import shlex
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from hgpose.cli import build_parser, main
from hgpose.cli.train import build_config
from hgpose.runtime.files import TEMP_PREFIX, UserError
from hgpose.train.config import TrainConfig
from hgpose.train.loop import train
from hgpose.train.machine import machine_differences
from hgpose.train.out_dir import check_new_run_dir
from hgpose.train.run_dir import LOCK_NAME
from test_train import TINY_FLAGS, quick_config, read_metrics

QUICK = ["--epochs", "1", "--batch-size", "8", "--subset", "16", "--workers", "0", "--cache", "off",
         "--no-progress", "--no-report", *TINY_FLAGS]


@pytest.fixture
def threads_kept():
    """These tests set torch's thread count as train does: give the session its own back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def snapshot(folder):
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def one_line(err: str) -> str:
    """The one error line of a command's stderr (beside what data loading says), never a traceback."""
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --- never write into what is not ours ------------------------------------------------------------


def test_out_into_a_folder_of_someone_elses_files_is_refused_and_nothing_is_touched(synth_dataset, tmp_path,
                                                                                      capsys):
    theirs = tmp_path / "theirs"
    (theirs / "checkpoints").mkdir(parents=True)
    for name in ("metrics.csv", "best.safetensors", "checkpoints/epoch_001.safetensors", ".notes.tmp", ".tmp1234",
                 f"{TEMP_PREFIX}looks-like-ours"):  # even our temp prefix is theirs in a folder that is theirs
        (theirs / name).write_text(f"the user's {name}")
    before = snapshot(theirs)
    assert main(["train", "--data", str(synth_dataset), "--out", str(theirs), *QUICK]) == 2
    line = one_line(capsys.readouterr().err)
    assert "not an hgpose run" in line and str(theirs) in line
    assert snapshot(theirs) == before


def test_out_naming_a_file_or_a_path_under_a_file_is_one_line(synth_dataset, tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    for out in (a_file, a_file / "run"):
        assert main(["train", "--data", str(synth_dataset), "--out", str(out), *QUICK]) == 2
        assert "not a folder" in one_line(capsys.readouterr().err)
    assert a_file.read_text() == "keep me"


def test_a_folder_a_killed_start_left_is_ours_and_anything_else_is_not(tmp_path):
    # what a run writes before config.yaml: its lock, train.log, an empty checkpoints/, a temp file
    early = tmp_path / "early"
    (early / "checkpoints").mkdir(parents=True)
    (early / LOCK_NAME).write_text("12345\n")
    (early / "train.log").write_text("train2017: kept 43 instances\n")
    (early / f"{TEMP_PREFIX}config.yaml.x").mkdir()
    check_new_run_dir(early)
    (early / "checkpoints" / "epoch_001.safetensors").write_bytes(b"weights")
    with pytest.raises(UserError, match=r"checkpoints/epoch_001\.safetensors"):
        check_new_run_dir(early)
    lockless = tmp_path / "lockless"  # without our lock, a train.log alone is someone's file
    lockless.mkdir()
    (lockless / "train.log").write_text("their log\n")
    with pytest.raises(UserError, match="not an hgpose run"):
        check_new_run_dir(lockless)


def test_an_empty_folder_takes_a_run(synth_dataset, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "--data", str(synth_dataset), "--out", str(empty), *QUICK]) == 0
    assert len(read_metrics(empty)) == 1


def test_a_refused_train_leaves_no_folder_it_made_and_empties_an_empty_one_again(tmp_path, capsys):
    made = tmp_path / "new" / "deep" / "run"
    assert main(["train", "--data", str(tmp_path / "no-such-data"), "--out", str(made), *QUICK]) == 2
    assert "data root not found" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "new").exists()
    given = tmp_path / "given"
    given.mkdir()
    assert main(["train", "--data", str(tmp_path / "no-such-data"), "--out", str(given), *QUICK]) == 2
    assert given.is_dir() and not list(given.iterdir())


HOLD_LOCK = """
import fcntl, sys
with open(sys.argv[1], "w") as lock:
    fcntl.lockf(lock, fcntl.LOCK_EX)
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_a_refused_train_into_a_folder_another_train_holds_leaves_it(synth_dataset, tmp_path, capsys):
    held = tmp_path / "held"
    held.mkdir()
    # another process writing there (a POSIX lock never refuses its own process, so not this one)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(held / LOCK_NAME)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        assert main(["train", "--data", str(synth_dataset), "--out", str(held), *QUICK]) == 2
    finally:
        holder.communicate("")
    assert "another hgpose train is writing" in one_line(capsys.readouterr().err)
    assert (held / LOCK_NAME).is_file()


# --- one line for the rest of the bad inputs --------------------------------------------------------


def test_model_sizes_from_a_config_file_or_a_run_config_get_the_flags_bounds(synth_dataset, tmp_path, capsys):
    config_file = tmp_path / "huge.yaml"
    config_file.write_text("model: {features: 1000000000}\n")  # the seed's model at 256 GB of weights
    out = tmp_path / "never"
    assert main(["train", "--config", str(config_file), "--data", str(synth_dataset), "--out", str(out)]) == 2
    line = one_line(capsys.readouterr().err)
    assert str(config_file) in line and "features=1000000000 beyond the limits" in line
    assert not out.exists()
    run_dir = tmp_path / "edited"  # a run whose config.yaml was edited by hand
    run_dir.mkdir()
    record = TrainConfig(data=str(synth_dataset)).to_dict()
    record["model"]["input_size"] = 1 << 20
    (run_dir / "config.yaml").write_text(yaml.safe_dump(record))
    assert main(["train", "--resume", str(run_dir)]) == 2
    line = one_line(capsys.readouterr().err)
    assert str(run_dir / "config.yaml") in line and f"input_size={1 << 20} beyond the limits" in line


def test_a_wholly_unusable_validation_set_stops_before_epoch_1(tiny_coco, tmp_path, capsys):
    from hgpose.data.coco import build_splits

    for _ in range(40):
        tiny_coco.add_person(tiny_coco.add_image())
    root = tiny_coco.write("train2017")
    shutil.copy(tiny_coco.annotation_file("train2017"), tiny_coco.annotation_file("val2017"))  # train reads it too
    shutil.copytree(root / "train2017", root / "val2017")
    held_out = build_splits(str(root), seed=0)["val"]  # the images train holds out for validation
    names = {str(held_out.file_names[i]) for i in held_out.image_index}
    for name in names:  # a few bad files among 40: the folder itself passes its sampled check
        (root / "train2017" / name).write_text("not a JPEG")
    out = tmp_path / "run"
    assert main(["train", "--data", str(root), "--out", str(out), *QUICK]) == 2
    captured = capsys.readouterr()
    line = one_line(captured.err)
    assert str(tiny_coco.annotation_file("train2017")) in line
    assert f"all {len(held_out)} validation samples are in unusable images" in line and sorted(names)[0] in line
    assert "epoch   1" not in captured.out  # no epoch was spent
    assert not out.exists()  # a refused start leaves nothing behind


# --- a run that never finished an epoch starts again with new settings ---------------------------


def hinted_commands(line: str) -> list[list[str]]:
    """The commands a message quotes in backticks, as argument lists without `hgpose`."""
    quoted = line.split("`")[1::2]
    assert quoted and all(q.startswith("hgpose train ") for q in quoted), line
    return [shlex.split(q)[1:] for q in quoted]


def test_a_divergence_in_epoch_1_hints_the_command_that_restarts_it(synth_dataset, tmp_path, capsys):
    run_dir = tmp_path / "diverged"
    args = ["train", "--data", str(synth_dataset), "--out", str(run_dir), *QUICK, "--precision", "bf16"]
    assert main([*args, "--lr", "1e30"]) == 2  # a real divergence: the loss overflows in the first steps
    line = one_line(capsys.readouterr().err)
    assert "NaN or infinite in epoch 1" in line and "never finished an epoch" in line
    lower, fp32 = hinted_commands(line)
    assert lower == ["train", "--resume", str(run_dir), "--lr", "1e+29"]
    assert fp32 == ["train", "--resume", str(run_dir), "--precision", "fp32"]
    # the hinted command is accepted as it stands: it restarts the run (and 1e29 diverges too, so
    # it stops again, with the next hint)
    assert main(lower) == 2
    captured = capsys.readouterr()
    assert "restarting" in captured.out and "lr 1e+29 (was 1e+30)" in captured.out
    assert "--lr 1e+28" in one_line(captured.err)
    # the same command with a learning rate that works trains the run from epoch 1
    assert main([*lower[:-1], "1e-3"]) == 0
    assert [float(r["lr"]) for r in read_metrics(run_dir)] == [1e-3]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["lr"] == 1e-3
    # with an epoch done, the run's settings are kept again
    assert main(["train", "--resume", str(run_dir), "--lr", "1e-4", "--epochs", "2"]) == 2
    assert "conflict" in one_line(capsys.readouterr().err)


def test_a_divergence_after_epoch_1_hints_a_new_run_from_the_runs_config(synth_dataset, tmp_path, monkeypatch):
    import hgpose.train.loop as loop

    real_loss, calls = loop.heatmap_loss, {"n": 0}

    def nan_from_epoch_2(*args, **kwargs):
        calls["n"] += 1
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 2 else loss  # 16 samples in batches of 8: 2 steps an epoch

    monkeypatch.setattr(loop, "heatmap_loss", nan_from_epoch_2)
    run_dir = tmp_path / "run"
    with pytest.raises(UserError, match="NaN or infinite in epoch 2") as raised:
        train(quick_config(synth_dataset, run_dir, epochs=2, subset=16, precision="fp32"))
    [command] = hinted_commands(str(raised.value))
    assert command[-2:] == ["--lr", f"{2.5e-4 / 10:g}"]
    config = build_config(build_parser().parse_args(command))  # what that command would train
    assert config.lr == 2.5e-5 and config.out == str(tmp_path / "run2") and not (tmp_path / "run2").exists()
    assert config.model == quick_config(synth_dataset, run_dir).model
    assert config.data == str(synth_dataset.resolve())


def test_a_model_flag_that_conflicts_on_resume_names_the_field_and_both_values(synth_dataset, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "--data", str(synth_dataset), "--out", str(run_dir), *QUICK]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir), "--features", "64", "--depth", "2"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "features (run: 32, given: 64)" in line and "depth" not in line  # depth 2 agrees with the run
    # a flag that agrees with the run is no conflict, whatever the other fields' defaults are
    assert main(["train", "--resume", str(run_dir), "--features", "32"]) == 2
    assert "the run is finished" in one_line(capsys.readouterr().err)


# --- same machine, same numbers ------------------------------------------------------------------


def edit_machine_record(run_dir, **changes) -> None:
    info_file = run_dir / "run_info.json"
    info = json.loads(info_file.read_text())
    info["machine"].update(changes)
    info_file.write_text(json.dumps(info))


def test_the_run_records_its_machine(synth_dataset, tmp_path, threads_kept):
    run_dir = train(quick_config(synth_dataset, tmp_path / "run", epochs=1, subset=16, precision="fp32",
                                 threads=1))
    machine = json.loads((run_dir / "run_info.json").read_text())["machine"]
    assert machine["torch_threads"] == 1 and machine["precision"] == "fp32" and machine["device"] == "cpu"
    assert machine["torch_version"] == torch.__version__
    assert machine["cpu"]["capability"] == torch.backends.cpu.get_cpu_capability() and machine["cpu"]["model"]


def test_a_resume_restores_the_recorded_thread_count_and_says_so(synth_dataset, tmp_path, capsys, monkeypatch,
                                                                 threads_kept):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    run_dir = train(quick_config(synth_dataset, tmp_path / "run", epochs=1, subset=16, threads=1))
    edit_machine_record(run_dir, torch_threads=2)  # as if it had started with two threads
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir), "--epochs", "2", "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "torch threads: 2, as the run recorded" in out and "not the same machine" not in out
    assert torch.get_num_threads() == 2
    assert "torch threads: 2" in (run_dir / "train.log").read_text()
    # told otherwise, it uses that count and says, in one line, that the resume is not bit-identical
    assert main(["train", "--resume", str(run_dir), "--epochs", "3", "--no-report", "--threads", "1"]) == 0
    [line] = [li for li in capsys.readouterr().out.splitlines() if "not the same machine" in li]
    assert "torch threads 1 (run: 2, set by --threads)" in line and torch.get_num_threads() == 1


def test_a_differing_recorded_torch_version_gives_one_line(synth_dataset, tmp_path, capsys, threads_kept):
    run_dir = train(quick_config(synth_dataset, tmp_path / "run", epochs=1, subset=16, threads=1))
    edit_machine_record(run_dir, torch_version="1.0.0")
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir), "--epochs", "2", "--no-report", "--threads", "1"]) == 0
    lines = [li for li in capsys.readouterr().out.splitlines() if "not the same machine" in li]
    assert len(lines) == 1 and f"torch {torch.__version__} (run: 1.0.0)" in lines[0]
    assert "threads" not in lines[0]  # only what differs is named


def test_machine_differences_name_the_cpu_kind_and_the_precision():
    now = {"torch_threads": 2, "precision": "bf16", "device": "cpu", "torch_version": "2.13.0",
           "cpu": {"model": "Intel Xeon", "capability": "AVX512", "flags": ["avx2", "avx512_bf16", "amx_bf16"]}}
    then = {**now, "precision": "fp32", "cpu": {"model": "AMD EPYC", "capability": "AVX2", "flags": ["avx2"]}}
    differences = machine_differences(then, now)
    assert differences == ["precision bf16 (run: fp32)",
                           "CPU Intel Xeon [AVX512; avx2,avx512_bf16,amx_bf16] (run: AMD EPYC [AVX2; avx2])"]
    assert machine_differences(now, now) == [] and machine_differences(None, now) == []


def test_threads_is_checked_like_every_option(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path), "--threads", "0"]) == 2
    assert "--threads must be >= 1" in one_line(capsys.readouterr().err)
    config_file = tmp_path / "threads.yaml"
    config_file.write_text("threads: two\n")
    assert main(["train", "--config", str(config_file), "--data", str(tmp_path)]) == 2
    assert f"{config_file}: threads must be int" in one_line(capsys.readouterr().err)
