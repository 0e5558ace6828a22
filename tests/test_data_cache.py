"""The prepared crop cache: same samples as the JPEG path, staleness, atomic building."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from hgpose.data import prepare as prepare_module
from hgpose.data.cache import check_cache, find_cache, open_cache, read_cache_meta
from hgpose.data.coco import annotation_path, build_splits, load_split
from hgpose.data.dataset import PersonDataset
from hgpose.data.prepare import prepare_cache
from hgpose.runtime.files import UserError


def _prepare(root, cache_dir, split="train2017", size=64, **kwargs):
    return prepare_cache(annotation_path(root, split), root / split, size, cache_dir, progress=False, **kwargs)


def _assert_same_samples(a: PersonDataset, b: PersonDataset):
    assert len(a) == len(b) > 0
    for i in range(len(a)):
        x, y = a[i], b[i]
        for key in x:
            assert x[key].dtype == y[key].dtype and np.array_equal(x[key].numpy(), y[key].numpy()), (i, key)


@pytest.mark.parametrize("workers", [1, 2])
def test_cache_and_raw_paths_give_the_same_samples(synth_dataset, tmp_path, workers):
    path = _prepare(synth_dataset, tmp_path, workers=workers)
    assert path == tmp_path / "train2017_64" and find_cache(
        annotation_path(synth_dataset, "train2017"), synth_dataset / "train2017", 64, tmp_path) == path
    splits = build_splits(synth_dataset, val_fraction=0.25, verbose=False)
    for part in ("train", "val"):  # the held-out part reads the same cache through its rows
        raw = PersonDataset(splits[part], 64, cache="off")
        cached = PersonDataset(splits[part], 64, cache="auto", cache_dir=tmp_path)
        assert cached.using_cache and cached.cache_path == path and not raw.using_cache
        _assert_same_samples(raw, cached)
    explicit = PersonDataset(splits["val"], 64, cache=path)
    assert explicit.using_cache
    assert not PersonDataset(splits["val"], 96, cache="auto", cache_dir=tmp_path).using_cache  # other size


def test_default_cache_location_is_under_the_root(tiny_coco):
    tiny_coco.add_person(tiny_coco.add_image())
    root = tiny_coco.write()
    assert _prepare(root, None) == root / "hgpose_cache" / "train2017_64"
    assert PersonDataset(load_split(root, "train2017"), 64).using_cache


def test_stale_cache_is_detected_ignored_and_rebuilt(tiny_coco, tmp_path, capsys):
    image = tiny_coco.add_image()
    tiny_coco.add_person(image)
    root = tiny_coco.write()
    path = _prepare(root, tmp_path / "c")
    json_file = tiny_coco.annotation_file()
    assert check_cache(json_file, root / "train2017", 64, tmp_path / "c").state == "current"

    tiny_coco.add_person(image, bbox=[10, 10, 60, 90])
    tiny_coco.write()
    status = check_cache(json_file, root / "train2017", 64, tmp_path / "c")
    assert (status.state, status.reason) == ("stale", "source JSON changed")
    capsys.readouterr()
    dataset = PersonDataset(load_split(root, "train2017"), 64, cache="auto", cache_dir=tmp_path / "c")
    assert not dataset.using_cache and len(dataset) == 2
    assert "stale (source JSON changed)" in capsys.readouterr().err
    with pytest.raises(UserError, match="no current cache"):
        PersonDataset(load_split(root, "train2017"), 64, cache=path)

    assert _prepare(root, tmp_path / "c") == path
    assert "rebuilding cache for train2017 (source JSON changed)" in capsys.readouterr().err
    rebuilt = PersonDataset(load_split(root, "train2017"), 64, cache="auto", cache_dir=tmp_path / "c")
    assert rebuilt.using_cache and read_cache_meta(path)["count"] == 2
    _assert_same_samples(PersonDataset(load_split(root, "train2017"), 64, cache="off"), rebuilt)
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["train2017_64"]  # old one deleted


def test_interrupted_prepare_leaves_nothing_that_looks_complete(synth_dataset, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare_module, "_crop_all", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _prepare(synth_dataset, tmp_path)
    assert list(tmp_path.iterdir()) == []  # the temporary folder is removed on the way out
    assert check_cache(annotation_path(synth_dataset, "train2017"), synth_dataset / "train2017", 64,
                       tmp_path).state == "missing"


def test_killed_prepare_is_not_used_and_its_leftovers_are_removed(synth_dataset, tmp_path):
    cache = tmp_path / "cache"
    script = f"""
import time
from pathlib import Path
import hgpose.data.prepare as c
from hgpose.data.images import crop_file
cropped = Path({str(tmp_path / "cropped")!r})
def slow(*args, **kwargs):
    crops = crop_file(*args, **kwargs)
    cropped.touch()  # the build is under way: a crop is done
    time.sleep(0.2)
    return crops
c.crop_file = slow
root = Path({str(synth_dataset)!r})
c.prepare_cache(root / "annotations/person_keypoints_train2017.json", root / "train2017", 64,
                Path({str(cache)!r}), progress=False, workers=1)
"""
    child = subprocess.Popen([sys.executable, "-c", script])
    _wait_for(lambda: (tmp_path / "cropped").exists() and list(cache.glob(".hgpose-tmp-train2017_64.new-*/crops.u8")))
    child.send_signal(signal.SIGKILL)
    child.wait()
    leftovers = list(cache.glob(".hgpose-tmp-train2017_64.new-*"))
    assert len(leftovers) == 1 and not (cache / "train2017_64").exists()
    json_file, image_dir = annotation_path(synth_dataset, "train2017"), synth_dataset / "train2017"
    assert find_cache(json_file, image_dir, 64, cache) is None
    # even a leftover holding every file is not mistaken for a cache: only the final name counts
    (leftovers[0] / "meta.json").write_text(json.dumps({"format": "hgpose crop cache"}))
    assert find_cache(json_file, image_dir, 64, cache) is None

    assert _prepare(synth_dataset, cache) == cache / "train2017_64"
    assert not list(cache.glob(".hgpose-tmp-*"))
    assert find_cache(json_file, image_dir, 64, cache) is not None


def test_unreadable_images_are_invalid_rows_counted_in_the_cache(tiny_coco, tmp_path):
    good = tiny_coco.add_image()
    missing = tiny_coco.add_image(write=False)
    tiny_coco.add_person(good)
    tiny_coco.add_person(missing)
    tiny_coco.add_person(missing, bbox=[5, 5, 30, 30])
    root = tiny_coco.write()
    path = _prepare(root, tmp_path)
    meta = read_cache_meta(path)
    assert meta["invalid"] == 2
    assert meta["unreadable"] == [{"file_name": f"{missing:012d}.jpg", "problem": "missing file", "instances": 2}]
    dataset = PersonDataset(load_split(root, "train2017"), 64, cache_dir=tmp_path)
    assert dataset.using_cache
    assert [bool(dataset[i]["valid"]) for i in range(3)] == [True, False, False]
    assert dataset[1]["image"].sum() == 0 and dataset[1]["visibility"].sum() == 0
    assert os.stat(path / "meta.json").st_mode & 0o044  # readable by others, like the crops


def test_a_cache_without_a_usable_crop_is_never_current(tiny_coco, tmp_path):
    tiny_coco.add_person(tiny_coco.add_image(), iscrowd=1)
    root = tiny_coco.write()
    with pytest.raises(UserError, match="no person instance to crop; no cache written"):
        _prepare(root, tmp_path / "c")
    missing = tiny_coco.add_image(write=False)
    tiny_coco.add_person(missing)
    tiny_coco.write()
    with pytest.raises(UserError, match=r"none of its 1 instances could be cropped .*missing file"):
        _prepare(root, tmp_path / "c")
    assert list((tmp_path / "c").iterdir()) == []
    assert check_cache(annotation_path(root, "train2017"), root / "train2017", 64, tmp_path / "c").state == "missing"
    dataset = PersonDataset(load_split(root, "train2017", check_images=False), 64, cache_dir=tmp_path / "c")
    assert not dataset.using_cache and not dataset[0]["valid"]


# --- reading -------------------------------------------------------------------------------------


def test_reader_returns_rows_in_the_order_asked_with_repeats(synth_dataset, tmp_path):
    path = _prepare(synth_dataset, tmp_path, workers=1)
    reader = open_cache(path)
    n = reader.count
    every = reader.read_rows(np.arange(n))
    raw = PersonDataset(load_split(synth_dataset, "train2017"), 64, cache="off")
    assert all(np.array_equal(every[i], raw[i]["image"].numpy()) for i in range(n))
    rows = np.array([n - 1, 3, 4, 5, 0, 3, 1, 2])  # a run of 3, a repeat, out of order
    assert np.array_equal(reader.read_rows(rows), every[rows])
    with pytest.raises(IndexError):
        reader.read_rows([n])


def _read_bytes() -> int:
    for line in open("/proc/self/io"):
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    return 0


def test_reading_rows_from_disk_reads_only_those_rows(synth_dataset, tmp_path):
    """Cold rows (dropped from the page cache) cost their own bytes, not the read-ahead around them."""
    path = _prepare(synth_dataset, tmp_path, workers=1)
    reader = open_cache(path)
    rows = np.arange(0, reader.count, 4)[:12]
    fd = os.open(path / "crops.u8", os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # clean pages (prepare fsynced): dropped
    os.close(fd)
    before = _read_bytes()
    reader.read_rows(rows)
    read = _read_bytes() - before
    if read == 0:
        pytest.skip("this filesystem reports no read_bytes (or keeps the pages)")
    needed = len(rows) * reader.row_bytes
    assert needed <= read <= needed + len(rows) * 4096  # at most a page of rounding per row


def test_prepare_reads_about_the_source_image_bytes(synth_dataset, tmp_path):
    """Crops are written with pwrite: nothing of the cache is read back while it is built."""
    jpegs = sorted((synth_dataset / "train2017").glob("*.jpg"))
    index = load_split(synth_dataset, "train2017")
    for jpeg in jpegs:
        fd = os.open(jpeg, os.O_RDONLY)
        os.fsync(fd)  # written moments ago by the fixture: only clean pages can be dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    before = _read_bytes()
    _prepare(synth_dataset, tmp_path, workers=1, index=index)  # in this process: its reads count here
    read = _read_bytes() - before
    if read == 0:
        pytest.skip("this filesystem reports no read_bytes (or keeps the pages)")
    source = sum(j.stat().st_size for j in jpegs)
    assert 0.9 * source <= read <= 1.1 * source + 64 * 4096


# --- building: disk full, dying worker, Ctrl-C, two at once ---------------------------------------------


def _prepare_process(root, cache_dir, *, delay=0.0, workers=2, gate=None, marks=None, **popen):
    """`hgpose prepare` in a child process, each image read `delay` seconds slower (and not before
    the file `gate` exists, when given); each process that has cropped an image touches marks/PID."""
    argv = ["prepare", "--data", str(root), "--splits", "train2017", "--input-size", "64",
            "--cache-dir", str(cache_dir), "--workers", str(workers), "--no-progress"]
    script = f"""
import sys, time
import hgpose.data.prepare as c
from hgpose.data.images import crop_file
from pathlib import Path
import os
def slow(*args, **kwargs):
    time.sleep({delay})
    while {str(gate) if gate else ""!r} and not Path({str(gate) if gate else ""!r}).exists():
        time.sleep(0.02)
    crops = crop_file(*args, **kwargs)
    if {str(marks) if marks else ""!r}:
        (Path({str(marks) if marks else ""!r}) / str(os.getpid())).touch()
    return crops
c.crop_file = slow
from hgpose.cli import main
sys.exit(main({argv!r}))
"""
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **popen)


def _wait_for(predicate, seconds=60.0):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _children(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found += [int(p) for p in f.read().split()]
    return found


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if not line.startswith(("building", "rebuilding", "train2017:"))]


@pytest.mark.slow
def test_a_dying_worker_ends_prepare_with_one_line(synth_dataset, tmp_path):
    cache, marks = tmp_path / "cache", tmp_path / "marks"
    marks.mkdir()
    child = _prepare_process(synth_dataset, cache, delay=0.3, marks=marks)
    _wait_for(lambda: any(str(pid) in os.listdir(marks) for pid in _children(child.pid)))  # a worker has cropped
    os.kill(int(next(pid for pid in os.listdir(marks) if int(pid) in _children(child.pid))), signal.SIGKILL)
    _, err = child.communicate(timeout=60)  # never a hang
    assert child.returncode == 2, err
    assert _error_lines(err) == [line for line in _error_lines(err) if "worker process died" in line]
    assert len(_error_lines(err)) == 1 and "Traceback" not in err
    assert not cache.exists() or list(cache.iterdir()) == []  # no half-built cache left behind


@pytest.mark.slow
def test_ctrl_c_stops_prepare_with_one_line_and_no_worker_tracebacks(synth_dataset, tmp_path):
    cache, marks = tmp_path / "cache", tmp_path / "marks"
    marks.mkdir()
    child = _prepare_process(synth_dataset, cache, delay=0.3, marks=marks, start_new_session=True)
    _wait_for(lambda: len(set(os.listdir(marks)) & {str(pid) for pid in _children(child.pid)}) >= 2)  # both crop
    os.killpg(child.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
    _, err = child.communicate(timeout=60)
    assert child.returncode == 130, err
    assert _error_lines(err) == ["hgpose prepare: interrupted"]
    assert not cache.exists() or list(cache.iterdir()) == []


@pytest.mark.slow
def test_two_prepares_at_once_end_with_one_current_cache(synth_dataset, tmp_path):
    cache_dir, gate = tmp_path / "c", tmp_path / "go"
    first = _prepare_process(synth_dataset, cache_dir, workers=1, gate=gate)  # holds on until `gate`
    _wait_for(lambda: list(cache_dir.glob(".hgpose-tmp-train2017_64.new-*")))
    second = _prepare_process(synth_dataset, cache_dir, workers=1)
    assert "waiting for another hgpose prepare" in second.stderr.readline()
    gate.touch()
    out1, err1 = first.communicate(timeout=120)
    out2, err2 = second.communicate(timeout=120)
    assert first.returncode == 0 and second.returncode == 0, err1 + err2
    assert "built by another prepare" in err2
    assert [p.name for p in cache_dir.iterdir()] == ["train2017_64"]
    json_file, image_dir = annotation_path(synth_dataset, "train2017"), synth_dataset / "train2017"
    assert check_cache(json_file, image_dir, 64, cache_dir).state == "current"
    assert out1.splitlines()[-1] == out2.splitlines()[-1]  # the same crops counted


@pytest.fixture
def small_disk(tmp_path):
    """A real 64 KB tmpfs (needs root and mount permission; skipped otherwise)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_one_line_before_any_work(synth_dataset, tmp_path, small_disk):
    child = _prepare_process(synth_dataset, small_disk / "cache", workers=1)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 2
    assert len(_error_lines(err)) == 1 and "GB free" in err and str(small_disk) in err
    assert list((small_disk / "cache").iterdir()) == []
    # the reservation itself (what stops a prepare when another writer took the space meanwhile)
    with pytest.raises(UserError, match="cannot reserve .*No space left"):
        prepare_module._reserve(small_disk / "big", 1 << 20, small_disk)
