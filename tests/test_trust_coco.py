"""Annotation files from other projects: one too large for memory is refused from its size before
parsing; a COCO-17 set whose person category names extra keypoints (HumanArt) is accepted with a note."""

import os

import pytest

from hgpose.data.coco import MEMORY_PER_FILE_BYTE, available_memory, check_fits_in_memory, load_split
from hgpose.keypoints import KEYPOINT_NAMES, PERSON_CATEGORY
from hgpose.runtime.files import UserError
from hgpose.train.loop import train
from test_train import quick_config

HUMANART_EXTRA = ["left_finger", "right_finger", "left_toe", "right_toe"]


def humanart_like(tiny_coco, names=None, triplets: int = 17):
    category = dict(PERSON_CATEGORY, keypoints=names or [*KEYPOINT_NAMES, *HUMANART_EXTRA])
    for _ in range(4):
        image = tiny_coco.add_image()
        keypoints = [v for k in range(triplets) for v in (50 + k % 5, 30 + 4 * (k % 15), 2)]
        tiny_coco.add_person(image, bbox=(40.0, 20.0, 40.0, 80.0), keypoints=keypoints)
    for split in ("train2017", "val2017"):
        tiny_coco.write(split, categories=[category])
    return tiny_coco.root


def test_a_person_category_naming_21_keypoints_coco_first_is_accepted_with_a_note(tiny_coco, capsys):
    root = humanart_like(tiny_coco)
    index = load_split(root, "train2017")
    assert len(index) == 4 and index.keypoints.shape == (4, 17, 3)
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "names 21 keypoints" in notes[0] and "left_toe" in notes[0], err


def test_a_humanart_like_set_trains(tiny_coco, tmp_path):
    root = humanart_like(tiny_coco)
    run_dir = train(quick_config(root, tmp_path / "run", epochs=1))
    assert (run_dir / "last.safetensors").exists()


def test_extra_names_whose_first_17_are_not_cocos_are_refused(tiny_coco):
    names = [*KEYPOINT_NAMES, *HUMANART_EXTRA]
    names[3], names[4] = names[4], names[3]
    root = humanart_like(tiny_coco, names=names)
    with pytest.raises(UserError, match="has 21 keypoints, not COCO's 17"):
        load_split(root, "train2017")


def test_21_names_with_21_keypoint_triplets_are_refused(tiny_coco):
    root = humanart_like(tiny_coco, triplets=21)
    with pytest.raises(UserError, match="wrong schema: .*a list of 51 numbers"):
        load_split(root, "train2017")


def test_the_memory_rule_is_a_multiple_of_the_file_size(tmp_path):
    path = tmp_path / "a.json"
    path.write_bytes(b" " * 1000)
    check_fits_in_memory(path, available=1000 * MEMORY_PER_FILE_BYTE)
    with pytest.raises(UserError, match=r"a\.json: too large to load here: .*about 4x its size in memory"):
        check_fits_in_memory(path, available=1000 * MEMORY_PER_FILE_BYTE - 1)


def test_an_annotation_file_larger_than_memory_is_refused_before_it_is_read(tiny_coco, tmp_path):
    available = available_memory()
    if available is None:
        pytest.skip("no MemAvailable on this system")
    root = humanart_like(tiny_coco)
    big = tiny_coco.annotation_file("train2017")
    os.truncate(big, available)  # a sparse file of MemAvailable bytes: larger than any parse could hold
    with pytest.raises(UserError) as caught:
        load_split(root, "train2017")
    message = str(caught.value)
    assert message.startswith(f"{big}: too large to load here") and "the limit is" in message
    limit = float(message.split("the limit is ")[1].split(" GB")[0])
    assert limit == pytest.approx(available / MEMORY_PER_FILE_BYTE / 1e9, rel=0.2)  # memory moves a little
