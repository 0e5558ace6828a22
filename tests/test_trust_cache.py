"""The crop cache after real kills: a SIGKILLed `prepare --force` leaves its temp folder, which the
next prepare removes unless a live prepare holds it; the swap of old and new cache never leaves
neither in place."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hgpose.data.cache import check_cache
from hgpose.data.coco import annotation_path
from hgpose.data.prepare import _exchange, prepare_cache, sweep_stale_temp_folders

SIZE = 64


def prepare_here(root, cache_dir, **kwargs) -> Path:
    return prepare_cache(annotation_path(root, "train2017"), root / "train2017", SIZE, cache_dir, progress=False,
                         workers=1, **kwargs)


def state(root, cache_dir) -> str:
    return check_cache(annotation_path(root, "train2017"), root / "train2017", SIZE, cache_dir).state


def forced_prepare_process(root, cache_dir, cropped: Path, gate: Path | None = None) -> subprocess.Popen:
    """`hgpose prepare --force` in a child process that touches `cropped` after its first crop and,
    with `gate`, crops nothing more until that file exists."""
    argv = ["prepare", "--data", str(root), "--splits", "train2017", "--input-size", str(SIZE), "--cache-dir",
            str(cache_dir), "--workers", "1", "--no-progress", "--force"]
    script = f"""
import sys, time
from pathlib import Path
import hgpose.data.prepare as c
from hgpose.data.images import crop_file
cropped, gate = Path({str(cropped)!r}), {str(gate) if gate else None!r}
def slow(*args, **kwargs):
    crops = crop_file(*args, **kwargs)
    cropped.touch()
    while gate and not Path(gate).exists():
        time.sleep(0.02)
    time.sleep(0.05)
    return crops
c.crop_file = slow
from hgpose.cli import main
sys.exit(main({argv!r}))
"""
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def wait_for(predicate, proc: subprocess.Popen, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert proc.poll() is None and time.monotonic() < deadline, "the prepare ended or timed out"
        time.sleep(0.02)


def temp_folders(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.glob(".hgpose-tmp-*"))


@pytest.mark.slow
def test_a_sigkilled_prepare_force_keeps_the_old_cache_and_the_next_prepare_sweeps_its_temp(synth_dataset,
                                                                                           tmp_path):
    cache_dir = tmp_path / "cache"
    path = prepare_here(synth_dataset, cache_dir)
    before = (path / "crops.u8").stat().st_ino
    child = forced_prepare_process(synth_dataset, cache_dir, tmp_path / "cropped")
    wait_for(lambda: (tmp_path / "cropped").exists() and temp_folders(cache_dir), child)
    child.send_signal(signal.SIGKILL)
    child.wait()
    leftover = temp_folders(cache_dir)
    assert len(leftover) == 1 and (leftover[0] / "crops.u8").exists()  # the full-size file a kill leaves
    assert state(synth_dataset, cache_dir) == "current" and (path / "crops.u8").stat().st_ino == before

    assert prepare_here(synth_dataset, cache_dir) == path  # current: nothing rebuilt, but the leftover goes
    assert temp_folders(cache_dir) == [] and (path / "crops.u8").stat().st_ino == before


@pytest.mark.slow
def test_the_temp_folder_of_a_running_prepare_is_left_alone(synth_dataset, tmp_path):
    cache_dir, gate = tmp_path / "cache", tmp_path / "go"
    prepare_here(synth_dataset, cache_dir)
    child = forced_prepare_process(synth_dataset, cache_dir, tmp_path / "cropped", gate=gate)
    try:
        wait_for(lambda: (tmp_path / "cropped").exists(), child)  # it holds the lock and is cropping
        running = temp_folders(cache_dir)
        assert len(running) == 1
        prepare_here(synth_dataset, cache_dir)  # a second, plain prepare finds the cache current
        assert temp_folders(cache_dir) == running and (running[0] / "crops.u8").exists()
    finally:
        gate.touch()
    _, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    assert temp_folders(cache_dir) == [] and state(synth_dataset, cache_dir) == "current"


def test_force_rebuild_swaps_in_one_step_and_leaves_no_temp(synth_dataset, tmp_path):
    cache_dir = tmp_path / "cache"
    path = prepare_here(synth_dataset, cache_dir)
    before = (path / "crops.u8").stat().st_ino
    assert prepare_here(synth_dataset, cache_dir, force=True) == path
    assert (path / "crops.u8").stat().st_ino != before and state(synth_dataset, cache_dir) == "current"
    assert [p.name for p in cache_dir.iterdir()] == [path.name]


def test_exchange_swaps_two_real_folders_in_one_call(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "which").write_text("new")
    (b / "which").write_text("old")
    if not _exchange(a, b):
        pytest.skip("this file system cannot exchange names (the two-rename fallback is tested below)")
    assert (b / "which").read_text() == "new" and (a / "which").read_text() == "old"


def test_a_kill_between_the_fallback_renames_gets_the_old_cache_back(synth_dataset, tmp_path, capsys):
    """Where the file system cannot exchange, the old cache is renamed aside before the new one moves
    in; a kill in between leaves no cache at `path`. The next prepare puts the old one back."""
    cache_dir = tmp_path / "cache"
    path = prepare_here(synth_dataset, cache_dir)
    before = (path / "crops.u8").stat().st_ino
    dead = 2**22 + 12345  # above pid_max's default: no live process
    os.rename(path, cache_dir / f".hgpose-tmp-{path.name}.old-{dead}")  # the state such a kill leaves
    (cache_dir / f".hgpose-tmp-{path.name}.new-{dead}").mkdir()
    capsys.readouterr()
    assert prepare_here(synth_dataset, cache_dir) == path
    assert (path / "crops.u8").stat().st_ino == before  # the old cache, not a rebuild
    assert "building cache" not in capsys.readouterr().err
    assert [p.name for p in cache_dir.iterdir()] == [path.name]


def test_sweep_touches_only_names_hgpose_gives(tmp_path):
    ours = [tmp_path / ".hgpose-tmp-val2017_64.new-17", tmp_path / ".train2017_256.tmp-4242"]
    users = [tmp_path / ".my.tmp-folder", tmp_path / "train2017_64", tmp_path / ".backup.old-1",
             tmp_path / ".hgpose-tmp-index_train2017.npz.k2j3h4l5"]  # another process's atomic write
    for folder in ours + users:
        folder.mkdir()
        (folder / "x").write_text("x")
    assert sorted(sweep_stale_temp_folders(tmp_path)) == sorted(ours)
    assert all((folder / "x").exists() for folder in users)
