"""The run lock: never written through a link or into a file not ours, dies with its process even
while forked loader workers live on, and a full disk while writing it is one line."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import mounted_tmpfs
from hgpose.cli import main
from hgpose.runtime.files import UserError, atomic_write_text, exclusive_lock, sweep_temp_files
from hgpose.train.loop import train
from hgpose.train.run_dir import LOCK_NAME
from test_train import TINY_FLAGS, TRAIN_COMMAND, quick_config, read_metrics, subprocess_env

BUSY = "busy: another holder"


def other_process_can_lock(path: Path) -> bool:
    """Whether a fresh process can take the POSIX lock on `path` right now."""
    code = ("import fcntl, sys\nf = open(sys.argv[1], 'r+')\n"
            "try:\n    fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept OSError:\n    sys.exit(1)\n")
    return subprocess.run([sys.executable, "-c", code, str(path)]).returncode == 0


def test_a_symlinked_lock_is_refused_and_its_target_untouched(tmp_path):
    victim = tmp_path / "precious.txt"
    victim.write_text("the user's notes\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / LOCK_NAME).symlink_to(victim)
    with pytest.raises(UserError, match=r"\.lock: is a symbolic link"):
        with exclusive_lock(tmp_path / "run" / LOCK_NAME, BUSY):
            pass
    assert victim.read_text() == "the user's notes\n"


@pytest.mark.parametrize("kind", ["hard link", "other data"])
def test_a_lock_file_that_is_not_ours_is_refused_never_truncated(tmp_path, kind):
    lock = tmp_path / LOCK_NAME
    keep = tmp_path / "kept.txt"
    keep.write_text("12 lines of a user's file\n")
    if kind == "hard link":
        os.link(keep, lock)
    else:
        lock.write_text("12 lines of a user's file\n")
    with pytest.raises(UserError, match="not hgpose's lock file|not an hgpose lock"):
        with exclusive_lock(lock, BUSY):
            pass
    assert lock.read_text() == "12 lines of a user's file\n"


def test_lock_refuses_a_second_holder_in_this_and_in_another_process_and_is_freed_after(tmp_path):
    lock = tmp_path / LOCK_NAME
    with exclusive_lock(lock, BUSY):  # (reading the file here would drop the lock: POSIX closes all)
        assert not other_process_can_lock(lock)
        with pytest.raises(UserError, match=BUSY):
            with exclusive_lock(lock, BUSY):
                pass
        assert not other_process_can_lock(lock)  # the refused second attempt left the lock held
    assert lock.read_text() == f"{os.getpid()}\n"
    assert other_process_can_lock(lock)
    with exclusive_lock(lock, BUSY):  # an old lock of ours (a PID line) is taken again
        pass


def test_train_resume_through_a_symlinked_lock_is_one_line_and_the_target_survives(synth_dataset, tmp_path,
                                                                                    capsys):
    run_dir = train(quick_config(synth_dataset, tmp_path / "run", epochs=1, subset=16))
    victim = tmp_path / "victim.txt"
    victim.write_text("not a lock\n")
    (run_dir / LOCK_NAME).unlink()
    (run_dir / LOCK_NAME).symlink_to(victim)
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir), "--epochs", "2", "--no-progress", "--no-report"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a symbolic link" in err[0], err
    assert victim.read_text() == "not a lock\n"
    assert len(read_metrics(run_dir)) == 1


def test_sweep_removes_only_hgpose_named_temp_entries(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "kept")
    ours = [tmp_path / ".hgpose-tmp-last.safetensors.abc123", tmp_path / ".hgpose-tmp-x"]
    ours[0].mkdir()
    (ours[0] / ".tmpAbCdEf").write_bytes(b"half")
    ours[1].write_bytes(b"half")
    users = [tmp_path / ".notes.tmp", tmp_path / ".tmpAbCdEf", tmp_path / ".a.txt.k3j2h1.tmp"]
    for path in users:
        path.write_text("mine")
    assert sorted(sweep_temp_files(tmp_path)) == sorted(ours)
    assert all(p.read_text() == "mine" for p in users) and (tmp_path / "a.txt").read_text() == "kept"


def children(pid: int) -> list[int]:
    """The live child processes of `pid` (Linux /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


@pytest.mark.slow
def test_resume_right_after_sigkill_of_a_train_with_loader_workers(synth_dataset, tmp_path):
    run_dir = tmp_path / "run"
    args = ["--data", str(synth_dataset), "--out", str(run_dir), "--epochs", "2", "--batch-size", "4",
            "--workers", "2", "--cache", "off", "--no-progress", "--no-report", *TINY_FLAGS]
    proc = subprocess.Popen([*TRAIN_COMMAND, *args], env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while len(workers := children(proc.pid)) < 2:  # the DataLoader's forked workers are running
        assert proc.poll() is None and time.time() < deadline, "training ended before its workers appeared"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # the parent only: its workers live on for a moment, as after a real kill
    proc.wait()
    try:
        alive = [w for w in workers if Path(f"/proc/{w}").exists()]
        assert alive, "the workers were gone before the check: the test proves nothing"
        assert other_process_can_lock(run_dir / LOCK_NAME)  # while the orphaned workers still hold the fd
        resumed = subprocess.run([*TRAIN_COMMAND, "--resume", str(run_dir), "--no-report", "--no-progress"],
                                 env=subprocess_env(), capture_output=True, text=True, timeout=600)
        assert resumed.returncode == 0, resumed.stderr
        assert "another hgpose train is writing" not in resumed.stderr
        assert [int(r["epoch"]) for r in read_metrics(run_dir)] == [1, 2]
    finally:
        for worker in workers:
            try:
                os.kill(worker, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def full_tmpfs(tmp_path):
    """A real 1 MB file system, filled to the last byte; skipped where mounting is not allowed."""
    with mounted_tmpfs(tmp_path / "full_disk", "1m") as mount_point:
        (mount_point / "run").mkdir()
        try:
            with open(mount_point / "filler", "wb") as f:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
        except OSError:
            pass
        yield mount_point


def test_train_on_a_full_disk_is_one_line_at_the_lock(synth_dataset, full_tmpfs, capsys):
    run_dir = full_tmpfs / "run"
    code = main(["train", "--data", str(synth_dataset), "--out", str(run_dir), "--epochs", "1", "--workers", "0",
                 "--cache", "off", "--no-progress", "--no-report", *TINY_FLAGS])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and f"{run_dir / LOCK_NAME}: cannot write (No space left on device)" in err[0], err
    assert not (run_dir / "config.yaml").exists()

