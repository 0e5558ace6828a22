"""The annotation index cache: a second load reads the .npz, a changed annotation file is parsed again."""

import os

import numpy as np
import pytest

from hgpose.data import coco, index_cache
from hgpose.data.coco import load_split


@pytest.fixture
def cached_index(monkeypatch):
    monkeypatch.setattr(index_cache, "MIN_BYTES", 0)  # the test files are tiny
    parses = []
    parse = coco.parse_annotations

    def counting(*args):
        parses.append(args[1])
        return parse(*args)

    monkeypatch.setattr(coco, "parse_annotations", counting)
    return parses


def _assert_same_index(a, b):
    assert (a.annotation_file, a.image_dir, a.split) == (b.annotation_file, b.image_dir, b.split)
    for name in ("rows", "image_ids", "ann_ids", "image_index", "image_sizes", "bboxes", "keypoints"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name
    assert (a.file_names, a.drops, a.ignored_keypoints) == (b.file_names, b.drops, b.ignored_keypoints)


def test_second_load_uses_the_cache_and_a_changed_file_invalidates_it(tiny_coco, cached_index):
    image = tiny_coco.add_image()
    tiny_coco.add_person(image)
    tiny_coco.add_person(image, iscrowd=1)
    tiny_coco.add_person(image, keypoints=[500, 500, 2] + [0] * 48)  # outside: dropped, counted
    root = tiny_coco.write()
    first = load_split(root, "train2017")
    cache_file = root / "hgpose_cache" / "index_train2017.npz"
    assert cached_index == [tiny_coco.annotation_file()] and cache_file.is_file()
    second = load_split(root, "train2017")
    assert len(cached_index) == 1  # not parsed again
    _assert_same_index(first, second)
    assert second.describe() == first.describe()

    os.utime(tiny_coco.annotation_file(), ns=(1, 1))  # same bytes, new mtime: still this file
    _assert_same_index(first, load_split(root, "train2017"))
    assert len(cached_index) == 1

    tiny_coco.add_person(image, bbox=[10, 10, 50, 60])
    tiny_coco.write()
    third = load_split(root, "train2017")
    assert len(cached_index) == 2 and len(third) == 2 == len(first) + 1
    _assert_same_index(third, load_split(root, "train2017"))
    assert len(cached_index) == 2


def test_an_unreadable_cache_or_folder_means_parsing(tiny_coco, cached_index):
    tiny_coco.add_person(tiny_coco.add_image())
    root = tiny_coco.write()
    load_split(root, "train2017")
    cache_file = root / "hgpose_cache" / "index_train2017.npz"
    cache_file.write_bytes(b"not an npz")
    assert len(load_split(root, "train2017")) == 1 and len(cached_index) == 2
    assert np.load(cache_file, allow_pickle=False)["rows"].tolist() == [0]  # rewritten

    cache_file.unlink()
    cache_file.parent.rmdir()
    cache_file.parent.write_text("a file where the cache folder would go")  # nowhere to write
    assert len(load_split(root, "train2017")) == 1 and len(cached_index) == 3


def test_small_files_are_just_parsed(tiny_coco, monkeypatch):
    tiny_coco.add_person(tiny_coco.add_image())
    root = tiny_coco.write()
    load_split(root, "train2017")
    assert not (root / "hgpose_cache").exists()
