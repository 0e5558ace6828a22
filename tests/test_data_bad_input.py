"""Bad input: dataset-level problems are one clear line and exit code 2; bad samples are skipped."""

import json

import cv2
import numpy as np
import pytest

from hgpose.cli import main
from hgpose.data.coco import load_split
from hgpose.data.dataset import PersonDataset
from hgpose.data.images import image_header_size
from hgpose.data.loader import make_loader


def _prepare_fails(capsys, root, *extra):
    capsys.readouterr()
    code = main(["prepare", "--data", str(root), "--splits", "train2017", "--no-progress", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_missing_root(capsys, tmp_path):
    assert f"{tmp_path / 'nowhere'}: data root not found" in _prepare_fails(capsys, tmp_path / "nowhere")


def test_missing_annotation_file(capsys, tmp_path):
    (tmp_path / "annotations").mkdir()
    err = _prepare_fails(capsys, tmp_path)
    assert "person_keypoints_train2017.json: annotation file not found" in err


def test_malformed_json(capsys, tiny_coco):
    tiny_coco.add_person(tiny_coco.add_image())
    root = tiny_coco.write()
    text = tiny_coco.annotation_file().read_text()
    tiny_coco.annotation_file().write_text(text[: len(text) // 2])
    assert "person_keypoints_train2017.json: malformed JSON" in _prepare_fails(capsys, root)


@pytest.mark.parametrize("breakage, message", [
    (lambda d: d["annotations"][0].update(keypoints=[1.0] * 50),
     "annotation id 1: 'keypoints' is a list of 50 items, expected a list of 51 numbers"),
    (lambda d: d["annotations"][1].update(keypoints=["x"] * 51),
     "annotation id 2: 'keypoints' is a list of 51 items, expected a list of 51 numbers"),
    (lambda d: d["annotations"][1].pop("bbox"), "annotation id 2 has no 'bbox'"),
    (lambda d: d["images"][0].pop("file_name"), "image id 1 has no 'file_name'"),
    (lambda d: d.pop("images"), "no 'images' list"),
    (lambda d: d["annotations"].append("oops"), "annotation #2 is not an object"),
    (lambda d: d["images"].append(dict(d["images"][0])), "image id 1 appears more than once"),
])
def test_wrong_schema_names_the_file_and_the_entry(capsys, tiny_coco, breakage, message):
    image = tiny_coco.add_image()
    tiny_coco.add_person(image)
    tiny_coco.add_person(image)
    root = tiny_coco.write()
    data = json.loads(tiny_coco.annotation_file().read_text())
    breakage(data)
    tiny_coco.annotation_file().write_text(json.dumps(data))
    err = _prepare_fails(capsys, root)
    assert "person_keypoints_train2017.json: wrong schema: " + message in err


def test_no_person_category(capsys, tiny_coco):
    tiny_coco.add_person(tiny_coco.add_image(), category_id=3)
    root = tiny_coco.write(categories=[{"id": 3, "name": "car"}])
    assert "person_keypoints_train2017.json: no person category" in _prepare_fails(capsys, root)


def _write_bad_images(tiny_coco):
    """Five good images, then a missing, a corrupt, a truncated and a wrongly sized one (a minority:
    a split where most images are unreadable is a dataset error, not a run)."""
    good = [tiny_coco.add_image() for _ in range(5)]
    missing = tiny_coco.add_image(write=False)
    corrupt = tiny_coco.add_image(write=False)
    truncated = tiny_coco.add_image(write=False)
    resized = tiny_coco.add_image(write=False)
    for image in (*good, missing, corrupt, truncated, resized):
        tiny_coco.add_person(image)
    root = tiny_coco.write()
    folder = root / "train2017"
    ok, jpeg = cv2.imencode(".jpg", np.full((120, 160, 3), 128, np.uint8))
    (folder / f"{corrupt:012d}.jpg").write_bytes(np.random.default_rng(0).bytes(5000))
    (folder / f"{truncated:012d}.jpg").write_bytes(jpeg.tobytes()[: len(jpeg) // 2])
    cv2.imwrite(str(folder / f"{resized:012d}.jpg"), np.zeros((60, 80, 3), np.uint8))
    return root


def test_unreadable_images_give_invalid_samples_without_crashing(tiny_coco):
    root = _write_bad_images(tiny_coco)
    dataset = PersonDataset(load_split(root, "train2017"), 64, cache="off")
    samples = [dataset[i] for i in range(len(dataset))]
    assert [bool(s["valid"]) for s in samples] == [True] * 5 + [False] * 4
    for s in samples[5:]:
        assert s["image"].shape == (3, 64, 64) and s["image"].sum() == 0 and s["visibility"].sum() == 0
    # inside DataLoader worker processes too; the loop counts the skips
    batches = list(make_loader(dataset, 2, shuffle=False, workers=2))
    valid = np.concatenate([b["valid"].numpy() for b in batches])
    assert valid.tolist() == [True] * 5 + [False] * 4


def test_prepare_reports_the_skipped_images(capsys, tiny_coco, tmp_path):
    root = _write_bad_images(tiny_coco)
    code = main(["prepare", "--data", str(root), "--splits", "train2017", "--input-size", "64",
                 "--cache-dir", str(tmp_path / "cache"), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert "4 instances skipped" in out
    for problem in ("missing file", "not an image of a known format", "truncated JPEG", "annotation says 160x120"):
        assert problem in out


def test_image_header_size_reads_jpeg_and_png_without_decoding():
    image = np.zeros((37, 53, 3), np.uint8)
    for ext in (".jpg", ".png"):
        assert image_header_size(cv2.imencode(ext, image)[1].tobytes()) == (53, 37)
    assert image_header_size(b"not an image") is None


def test_prepare_help_shows_only_real_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["prepare", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for wrong in ("(default: None)", "(default: True)", "(default: False)", "['train2017'"):
        assert wrong not in text
    assert "default: train2017 val2017" in text and "(default: 256)" in text
    assert "(default: all CPUs)" in text and "(default: DIR/hgpose_cache)" in text
