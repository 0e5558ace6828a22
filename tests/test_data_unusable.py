"""A dataset that cannot be used is one line and exit code 2, not a run (nor a traceback)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest

from hgpose.cli import main
from hgpose.data.coco import build_splits, load_split
from hgpose.model.hourglass import ModelConfig, build_model
from hgpose.model.weights import save_model
from hgpose.runtime.files import UserError


def _dataset(tiny_coco, images=6, width=160, height=120):
    for _ in range(images):
        tiny_coco.add_person(tiny_coco.add_image(width=width, height=height))
    return tiny_coco.write()


def _fails(capsys, argv) -> str:
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def _prepare(root, tmp_path):
    return ["prepare", "--data", str(root), "--splits", "train2017", "--input-size", "32",
            "--cache-dir", str(tmp_path / "cache"), "--no-progress"]


def test_a_missing_image_folder_names_the_folder_expected(capsys, tiny_coco, tmp_path):
    root = _dataset(tiny_coco)
    for path in (root / "train2017").iterdir():
        path.unlink()
    (root / "train2017").rmdir()
    err = _fails(capsys, _prepare(root, tmp_path))
    assert f"{root / 'train2017'}: image folder not found (expected the images of " in err
    assert not (tmp_path / "cache").exists()


def test_an_empty_image_folder(capsys, tiny_coco, tmp_path):
    root = _dataset(tiny_coco)
    for path in (root / "train2017").iterdir():
        path.unlink()
    assert f"{root / 'train2017'}: image folder is empty" in _fails(capsys, _prepare(root, tmp_path))


def test_images_unzipped_one_level_too_deep(capsys, tiny_coco, tmp_path):
    root = _dataset(tiny_coco)
    (root / "train2017").rename(tmp_path / "moved")
    (root / "train2017").mkdir()
    (tmp_path / "moved").rename(root / "train2017" / "train2017")
    err = _fails(capsys, _prepare(root, tmp_path))
    assert err.endswith(f"{root / 'train2017'}: the images are one level too deep, in "
                        f"{root / 'train2017' / 'train2017'}; move them up into {root / 'train2017'}")


def test_a_folder_of_images_of_other_sizes(capsys, tiny_coco, tmp_path):
    root = _dataset(tiny_coco)
    for path in (root / "train2017").iterdir():  # e.g. the resized copy of another dataset
        cv2.imwrite(str(path), np.zeros((60, 80, 3), np.uint8))
    err = _fails(capsys, _prepare(root, tmp_path))
    assert f"{root / 'train2017'}: 6 of 6 sampled images unusable (first: " in err
    assert "image is 80x60, annotation says 160x120" in err


def test_train_and_evaluate_and_explore_open_their_splits_through_the_same_check(capsys, tiny_coco, tmp_path):
    root = _dataset(tiny_coco)
    for split in ("val2017",):
        tiny_coco.write(split)
    for path in (root / "val2017").iterdir():
        path.unlink()
    with pytest.raises(UserError, match="val2017: image folder is empty"):
        build_splits(root, "train2017", "val2017", verbose=False)  # what train opens
    checkpoint = save_model(build_model(ModelConfig(depth=2, features=16, input_size=32)), tmp_path / "m.safetensors")
    common = ["--checkpoint", str(checkpoint), "--data", str(root), "--split", "val2017"]
    assert "val2017: image folder is empty" in _fails(capsys, ["evaluate", *common, "--device", "cpu",
                                                               "--no-progress"])
    assert "val2017: image folder is empty" in _fails(capsys, ["explore", *common, "--device", "cpu",
                                                               "--out", str(tmp_path / "explore")])


def test_a_few_bad_files_are_not_a_dataset_error(tiny_coco):
    root = _dataset(tiny_coco, images=8)
    (root / "train2017" / tiny_coco.images[0]["file_name"]).write_bytes(b"\xff\xd8 broken")
    (root / "train2017" / tiny_coco.images[3]["file_name"]).unlink()
    assert len(load_split(root, "train2017")) == 8


# --- annotation files no parser should choke on --------------------------------------------------------


def test_json_nested_absurdly_deep(capsys, tiny_coco, tmp_path):
    root = _dataset(tiny_coco, images=1)
    tiny_coco.annotation_file().write_text('{"images": ' + "[" * 200_000 + "]" * 200_000 + "}")
    err = _fails(capsys, _prepare(root, tmp_path))
    assert "person_keypoints_train2017.json: JSON nested too deeply to read" in err


@pytest.mark.parametrize("where, digits, message", [
    ("image id", str(2**70), "image id 1180591620717411303424: 'id' is 1180591620717411303424, expected a 64-bit"),
    ("annotation id", str(2**64), "'id' is 18446744073709551616, expected a 64-bit integer"),
    ("keypoint", "1" + "0" * 400, "'keypoints' is a list of 51 items, expected a list of 51 numbers"),
    ("image id", "1" + "0" * 5000, "unreadable JSON (Exceeds the limit"),
], ids=["image id 2^70", "annotation id 2^64", "keypoint 1e400", "5000 digits"])
def test_integers_beyond_64_bits(capsys, tiny_coco, tmp_path, where, digits, message):
    root = _dataset(tiny_coco, images=1)
    text = tiny_coco.annotation_file().read_text()
    data = json.loads(text)
    if where == "image id":
        data["images"][0]["id"] = data["annotations"][0]["image_id"] = -1
    elif where == "annotation id":
        data["annotations"][0]["id"] = -1
    else:
        data["annotations"][0]["keypoints"][0] = -1
    text = json.dumps(data).replace("-1,", f"{digits},", 2 if where == "image id" else 1)
    tiny_coco.annotation_file().write_text(text)
    assert message in _fails(capsys, _prepare(root, tmp_path))


@pytest.mark.slow
def test_an_annotation_file_too_large_for_memory(tiny_coco, tmp_path):
    """A real memory limit (RLIMIT_AS) in a real process: MemoryError becomes one line, exit 2."""
    root = _dataset(tiny_coco, images=1)
    numbers = ",".join(["1.5"] * 3_000_000)  # 12 MB of text, about 100 MB once parsed
    tiny_coco.annotation_file().write_text('{"images": [], "categories": [], "annotations": [' + numbers + "]}")
    script = textwrap.dedent(f"""
        import resource, sys
        from hgpose.cli import build_parser, main
        build_parser()  # import every command before the limit
        size = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
        limit = size + 60 * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        sys.exit(main({_prepare(root, tmp_path)!r}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert done.stderr.strip() == (f"hgpose prepare: error: {tiny_coco.annotation_file()}: "
                                   "too large to load into memory")
