"""The prepared crop cache: same samples as the JPEG path, staleness, atomic building."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from hgpose.data import cache as cache_module
from hgpose.data.cache import check_cache, find_cache, prepare_cache, read_cache_meta
from hgpose.data.coco import annotation_path, build_splits, load_split
from hgpose.data.dataset import PersonDataset
from hgpose.fileio import UserError


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

    monkeypatch.setattr(cache_module, "_crop_all", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _prepare(synth_dataset, tmp_path)
    assert list(tmp_path.iterdir()) == []  # the temporary folder is removed on the way out
    assert check_cache(annotation_path(synth_dataset, "train2017"), synth_dataset / "train2017", 64,
                       tmp_path).state == "missing"


def test_killed_prepare_is_not_used_and_its_leftovers_are_removed(synth_dataset, tmp_path):
    script = f"""
import time
from pathlib import Path
import hgpose.data.cache as c
from hgpose.data.dataset import read_crops
def slow(*args):
    time.sleep(0.2)
    return read_crops(*args)
c.read_crops = slow
root = Path({str(synth_dataset)!r})
c.prepare_cache(root / "annotations/person_keypoints_train2017.json", root / "train2017", 64,
                Path({str(tmp_path)!r}), progress=False, workers=1)
"""
    child = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 30
    while not list(tmp_path.glob(".train2017_64.tmp-*/crops.u8")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    child.send_signal(signal.SIGKILL)
    child.wait()
    leftovers = list(tmp_path.glob(".train2017_64.tmp-*"))
    assert len(leftovers) == 1 and not (tmp_path / "train2017_64").exists()
    json_file, image_dir = annotation_path(synth_dataset, "train2017"), synth_dataset / "train2017"
    assert find_cache(json_file, image_dir, 64, tmp_path) is None
    # even a leftover holding every file is not mistaken for a cache: only the final name counts
    (leftovers[0] / "meta.json").write_text(json.dumps({"format": "hgpose crop cache"}))
    assert find_cache(json_file, image_dir, 64, tmp_path) is None

    assert _prepare(synth_dataset, tmp_path) == tmp_path / "train2017_64"
    assert not list(tmp_path.glob(".train2017_64.*"))
    assert find_cache(json_file, image_dir, 64, tmp_path) is not None


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


def test_a_split_with_no_kept_instance_prepares_an_empty_cache(tiny_coco, tmp_path):
    tiny_coco.add_person(tiny_coco.add_image(), iscrowd=1)
    root = tiny_coco.write()
    path = _prepare(root, tmp_path)
    assert read_cache_meta(path)["count"] == 0
    dataset = PersonDataset(load_split(root, "train2017"), 64, cache_dir=tmp_path)
    assert dataset.using_cache and len(dataset) == 0
