"""The COCO index: kept instances, drop reasons, and the seeded image-level validation split."""

import json
import math

import numpy as np
import pytest

from hgpose.data.coco import build_splits, held_out_mask, is_safe_file_name, load_split
from hgpose.runtime.files import UserError


def _expected_kept(annotation_file):
    """Kept-instance count by the issue's rules, written out plainly over the JSON."""
    data = json.loads(annotation_file.read_text())
    sizes = {im["id"]: (im["width"], im["height"]) for im in data["images"]}
    kept = 0
    for a in data["annotations"]:
        if a["category_id"] != 1 or a["iscrowd"] or a["num_keypoints"] == 0:
            continue
        x, y, w, h = a["bbox"]
        width, height = sizes[a["image_id"]]
        if min(x + w, width) - max(x, 0) > 0 and min(y + h, height) - max(y, 0) > 0:
            kept += 1
    return kept


def test_generated_dataset_loads_with_the_expected_instance_count(synth_dataset):
    for split in ("train2017", "val2017"):
        index = load_split(synth_dataset, split)
        expected = _expected_kept(synth_dataset / "annotations" / f"person_keypoints_{split}.json")
        assert len(index) == expected > 0
        assert index.keypoints.shape == (expected, 17, 3) and index.keypoints.dtype == np.float32
        assert index.bboxes.shape == (expected, 4) and index.rows.tolist() == list(range(expected))
        assert index.image_sizes.shape == (len(index.file_names), 2)
        assert np.isfinite(index.keypoints).all()
        for position in range(len(index)):
            assert index.image_path(position).is_file()


def test_drop_reasons_are_counted_on_planted_bad_annotations(tiny_coco):
    good = tiny_coco.add_image()
    tiny_coco.add_person(good)  # kept
    tiny_coco.add_person(good, iscrowd=1)
    tiny_coco.add_person(good, keypoints=[0] * 51, num_keypoints=0)
    tiny_coco.add_person(good, bbox=[math.nan, 10, 20, 30])
    tiny_coco.add_person(good, bbox=[10, 10, -20, 30])
    tiny_coco.add_person(good, bbox=[10, 10, 0, 30])
    tiny_coco.add_person(good, bbox=[500, 10, 20, 30])  # nothing left after clipping to the image
    tiny_coco.add_person(good, category_id=2)
    nan_keypoints = [10, 10, 2] * 17
    nan_keypoints[0] = math.nan
    tiny_coco.add_person(good, keypoints=nan_keypoints)
    tiny_coco.add_person(good, keypoints=[-50, -50, 2] * 17)  # every labelled keypoint off the image
    one_outside = [50, 50, 2] * 17
    one_outside[3:6] = [400, 50, 2]
    tiny_coco.add_person(good, keypoints=one_outside)  # kept, that keypoint ignored
    tiny_coco.add_person(tiny_coco.add_image(file_name="../escape.jpg", write=False))
    tiny_coco.add_person(tiny_coco.add_image(file_name="/etc/absolute.jpg", write=False))
    tiny_coco.add_person(tiny_coco.add_image(file_name="sub/../../up.jpg", write=False))
    tiny_coco.add_person(tiny_coco.add_image(width=20000, height=20000, write=False))
    tiny_coco.add_person(image_id=999)
    root = tiny_coco.write(categories=[{"id": 1, "name": "person"}, {"id": 2, "name": "dog"}])

    index = load_split(root, "train2017")
    assert len(index) == 2
    assert {k: v for k, v in index.drops.items() if v} == {
        "not person": 1, "crowd": 1, "no keypoints": 1, "bad bbox": 4, "bad keypoints": 2,
        "unsafe file name": 3, "image too large": 1, "unknown image id": 1,
    }
    assert index.ignored_keypoints == 1
    assert index.keypoints[1, 1].tolist() == [0, 0, 0]
    assert index.file_names == [tiny_coco.images[0]["file_name"]]
    text = index.describe()
    assert "kept 2 instances" in text and "crowd 1" in text and "unsafe file name 3" in text


def test_bbox_is_clipped_to_the_image(tiny_coco):
    tiny_coco.add_person(tiny_coco.add_image(width=100, height=80), bbox=[-10, 20, 50, 100],
                         keypoints=[20, 40, 2] * 17)
    index = load_split(tiny_coco.write(), "train2017")
    assert index.bboxes.tolist() == [[0, 20, 40, 60]]


@pytest.mark.parametrize("name, safe", [
    ("000000000001.jpg", True), ("sub/dir/a.jpg", True), ("../a.jpg", False), ("a/../../b.jpg", False),
    ("/abs/a.jpg", False), ("C:\\a.jpg", False), ("C:a.jpg", False), ("", False), ("..", False),
])
def test_file_names_that_escape_the_image_folder_are_refused(name, safe):
    assert is_safe_file_name(name) == safe


def test_seeded_split_is_reproducible_and_image_level(synth_dataset):
    first = build_splits(synth_dataset, val_fraction=0.25, seed=3, verbose=False)
    again = build_splits(synth_dataset, val_fraction=0.25, seed=3, verbose=False)
    other = build_splits(synth_dataset, val_fraction=0.25, seed=4, verbose=False)
    train, val = first["train"], first["val"]
    assert np.array_equal(val.ann_ids, again["val"].ann_ids) and np.array_equal(train.ann_ids, again["train"].ann_ids)
    assert not np.array_equal(val.image_ids, other["val"].image_ids)
    assert not set(train.image_ids) & set(val.image_ids)
    all_images = np.unique(load_split(synth_dataset, "train2017").image_ids)
    assert len(np.unique(val.image_ids)) == round(0.25 * len(all_images))
    # rows point into the full file's table, so both parts share one cache
    assert sorted(train.rows.tolist() + val.rows.tolist()) == list(range(len(train) + len(val)))
    assert len(first["test"]) == len(load_split(synth_dataset, "val2017"))


def test_held_out_images_do_not_depend_on_file_order():
    ids = np.array([5, 5, 9, 11, 11, 11, 40, 41, 42, 43])
    mask = held_out_mask(ids, 0.5, seed=1)
    shuffled = np.random.default_rng(0).permutation(len(ids))
    assert np.array_equal(held_out_mask(ids[shuffled], 0.5, seed=1), mask[shuffled])
    assert len(np.unique(ids[mask])) == 4


def test_explicit_val_split_and_missing_split_file(synth_dataset):
    splits = build_splits(synth_dataset, val_split="val2017", verbose=False)
    assert np.array_equal(splits["val"].ann_ids, splits["test"].ann_ids)
    assert len(splits["train"]) == len(load_split(synth_dataset, "train2017"))
    with pytest.raises(UserError, match="person_keypoints_nosuch.json: annotation file not found"):
        build_splits(synth_dataset, val_split="nosuch", verbose=False)


def test_segmentation_is_cut_from_the_text_without_touching_anything_else():
    from hgpose.data.coco import _without_segmentation

    data = {
        "info": {"description": 'a string with "segmentation":[[1,2]] inside'},
        "annotations": [
            {"segmentation": [[1.5, 2, 3e2], [4, 5, 6]], "keypoints": [1, 2, 2], "id": 1},
            {"segmentation": {"counts": "0a1b`c", "size": [480, 640]}, "id": 2},
            {"segmentation": {"counts": [3, 4, 5], "size": [4, 3]}, "id": 3},
            {"segmentation": [], "bbox": [1, 2, 3, 4], "id": 4},
            {"id": 5, "segmentation": [[7, 8]]},
        ],
        "skeleton": [[16, 14], [14, 12]],
    }
    for text, cut in ((json.dumps(data), True), (json.dumps(data, separators=(",", ":")), True),
                      (json.dumps(data, indent=1), False)):  # pretty-printed polygons are left in: still right
        slim = json.loads(_without_segmentation(text.encode()))
        assert [a.get("segmentation") == 0 for a in slim["annotations"]] == [cut, True, True, False, cut]
        expected = json.loads(text)
        for a in slim["annotations"] + expected["annotations"]:
            a.pop("segmentation")
        assert slim == expected


def test_a_file_with_no_kept_instance_gives_an_empty_index(tiny_coco):
    image = tiny_coco.add_image()
    tiny_coco.add_person(image, iscrowd=1)
    tiny_coco.add_person(image, keypoints=[0] * 51)
    index = load_split(tiny_coco.write(), "train2017")
    assert len(index) == 0 and index.keypoints.shape == (0, 17, 3) and index.file_names == []
    assert index.drops["crowd"] == 1 and index.drops["no keypoints"] == 1
    assert len(build_splits(tiny_coco.root, test_split="train2017", verbose=False)["val"]) == 0
