"""`hgpose predict --boxes`: which file each entry is for, what is reported when one is missing, which
pixels a box refers to, and an image whose size contradicts its annotation. Real JPEGs and box files
written by the tests, a real (tiny, untrained) checkpoint."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

import hgpose
from conftest import random_jpeg
from hgpose.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint




def _predict(capsys, checkpoint, out, *args) -> tuple[int, str, list[dict]]:
    """(exit code, stderr, keypoints.json) of one `hgpose predict` run."""
    capsys.readouterr()
    code = main(["predict", "--checkpoint", str(checkpoint), "--out", str(out), "--no-progress", *map(str, args)])
    results_file = out / "keypoints.json"
    return code, capsys.readouterr().err, json.loads(results_file.read_text()) if results_file.is_file() else []


def _coco(path, images: list[tuple], boxes=((10, 10, 50, 70),)):
    """A COCO annotation file: images (id, file_name, width, height), each with the given person boxes."""
    annotations = [{"id": 10 * image_id + k, "image_id": image_id, "category_id": 1, "bbox": list(b), "iscrowd": 0}
                   for image_id, *_ in images for k, b in enumerate(boxes)]
    path.write_text(json.dumps({
        "images": [{"id": i, "file_name": n, "width": w, "height": h} for i, n, w, h in images],
        "annotations": annotations, "categories": [{"id": 1, "name": "person"}]}))
    return path


# --- one entry, one file ----------------------------------------------------------------------------------


def test_a_csv_base_name_matching_several_given_files_is_an_error_naming_them(checkpoint, tmp_path, capsys):
    for i, folder in enumerate(("seqA", "seqB")):
        random_jpeg(tmp_path / folder / "000000.jpg", seed=i)
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("file_name,x,y,w,h\n000000.jpg,10,10,50,70\n")
    for given in ([tmp_path / "seqA", tmp_path / "seqB"],  # two image roots
                  [tmp_path / "seqA" / "000000.jpg", tmp_path / "seqB" / "000000.jpg"]):  # two files
        code, err, _ = _predict(capsys, checkpoint, tmp_path / "out", *given, "--boxes", boxes)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "'000000.jpg' matches 2 of the given files" in err
        assert "seqA/000000.jpg" in err and "seqB/000000.jpg" in err and "relative to the image root" in err
        assert not (tmp_path / "out" / "keypoints.json").exists()


def test_csv_rows_may_name_paths_relative_to_the_image_root(checkpoint, tmp_path, capsys):
    for i, folder in enumerate(("seqA", "seqB")):
        random_jpeg(tmp_path / "root" / folder / "000000.jpg", seed=i)
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("file_name,x,y,w,h\nseqB/000000.jpg,5,5,40,60\nseqA/000000.jpg,10,10,50,70\n"
                     "seqA/000000.jpg,20,20,30,30\n")
    code, err, results = _predict(capsys, checkpoint, tmp_path / "out", tmp_path / "root", "--boxes", boxes)
    assert code == 0, err
    # ids are numbered in the CSV's order of first appearance, each row applied to its own file only
    assert sorted((r["image_id"], r["file_name"]) for r in results) == [
        (1, "seqB/000000.jpg"), (2, "seqA/000000.jpg"), (2, "seqA/000000.jpg")]
    # overlays keep the sub-folder, so each says which file it is
    assert cv2.imread(str(tmp_path / "out" / "seqA" / "000000_pose.jpg")).shape == (100, 80, 3)
    assert cv2.imread(str(tmp_path / "out" / "seqB" / "000000_pose.jpg")).shape == (100, 80, 3)
    # the same rows match the two files given one by one, by the tail of their paths
    code, err, again = _predict(capsys, checkpoint, tmp_path / "out2", tmp_path / "root" / "seqA" / "000000.jpg",
                                tmp_path / "root" / "seqB" / "000000.jpg", "--boxes", boxes)
    assert code == 0, err
    pairs = [sorted((r["image_id"], r["keypoints"]) for r in found) for found in (again, results)]
    assert pairs[0] == pairs[1]


# --- what was left out, and why ---------------------------------------------------------------------------


def test_listed_images_missing_from_the_folder_are_listed_as_skipped_at_the_end(checkpoint, tmp_path, capsys):
    root = tmp_path / "root"
    random_jpeg(root / "a.jpg")
    random_jpeg(root / "sub" / "c.jpg", seed=2)
    boxes = _coco(tmp_path / "boxes.json", [(1, "a.jpg", 80, 100), (2, "b.jpg", 80, 100), (3, "sub/c.jpg", 80, 100),
                                            (4, "sub/d.jpg", 80, 100)])
    code, err, results = _predict(capsys, checkpoint, tmp_path / "out", root, "--boxes", boxes)
    assert code == 0, err
    assert sorted(r["image_id"] for r in results) == [1, 3]
    summary = err[err.index("skipped 2 image(s):"):]  # at the end, after the run
    assert f"  b.jpg: listed in {boxes}, not found under {root}" in summary
    assert f"  sub/d.jpg: listed in {boxes}, not found under {root}" in summary


def test_a_listed_file_is_never_called_not_listed(checkpoint, tmp_path, capsys):
    # listed under a longer path than the one given: the reason says where it is listed
    random_jpeg(tmp_path / "elsewhere" / "000000.jpg")
    boxes = _coco(tmp_path / "boxes.json", [(1, "seqA/000000.jpg", 80, 100)])
    code, err, _ = _predict(capsys, checkpoint, tmp_path / "out", tmp_path / "elsewhere" / "000000.jpg",
                            "--boxes", boxes)
    assert code == 1
    assert f"listed in {boxes} only as 'seqA/000000.jpg'" in err and "not listed" not in err
    # a detection file whose every box of image 7 is dropped (below --min-box-score, not a person)
    random_jpeg(tmp_path / "dets" / "000000000007.jpg")
    random_jpeg(tmp_path / "dets" / "000000000008.jpg", seed=1)
    detections = tmp_path / "detections.json"
    detections.write_text(json.dumps([
        {"image_id": 7, "category_id": 1, "bbox": [10, 10, 50, 70], "score": 0.1},
        {"image_id": 7, "category_id": 2, "bbox": [10, 10, 50, 70], "score": 0.9},
        {"image_id": 8, "category_id": 1, "bbox": [10, 10, 50, 70], "score": 0.9}]))
    code, err, results = _predict(capsys, checkpoint, tmp_path / "out", tmp_path / "dets", "--boxes", detections,
                                  "--min-box-score", "0.5")
    assert code == 0 and [r["image_id"] for r in results] == [8]
    assert "none of the 2 box(es) of image id 7" in err and "not listed" not in err


# --- which pixels a box refers to -------------------------------------------------------------------------


def _spot_jpeg(path, orientation: int):
    """A 160x120 (stored) JPEG tagged with an EXIF orientation: viewers show 6 as 120 wide, 160 tall."""
    from PIL import Image

    pixels = np.random.default_rng(5).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, "JPEG", quality=95, exif=exif.tobytes())
    return path


def test_csv_and_box_boxes_refer_to_the_upright_photo(checkpoint, tmp_path, capsys):
    photo = _spot_jpeg(tmp_path / "photos" / "phone.jpg", orientation=6)
    box = [10, 125, 100, 30]  # near the bottom of the upright photo (160 tall); below the stored one (120 tall)
    expected = hgpose.load(checkpoint).predict(photo, [box])  # the Python API: the upright photo
    boxes = tmp_path / "boxes.csv"
    boxes.write_text(f"phone.jpg,{','.join(map(str, box))}\n")
    for flags in (["--boxes", boxes], ["--box", ",".join(map(str, box))]):
        out = tmp_path / f"out{flags[0]}"
        code, err, results = _predict(capsys, checkpoint, out, photo, *flags)
        assert code == 0 and "outside the image" not in err, err
        assert len(results) == 1
        np.testing.assert_allclose(np.reshape(results[0]["keypoints"], (17, 3)), expected[0], atol=0.006)
        assert cv2.imread(str(out / "phone_pose.jpg")).shape == (160, 120, 3)  # drawn upright


def test_the_help_says_which_pixels_each_kind_of_box_refers_to(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "boxes a person wrote (--box, a CSV file) refer to the photo as every viewer shows it" in text
    assert "COCO annotation and detection files refer to the stored pixels" in text


def test_an_image_whose_size_contradicts_the_coco_file_is_skipped_as_train_does(checkpoint, tmp_path, capsys):
    root = tmp_path / "root"
    random_jpeg(root / "right.jpg", size=(120, 160))
    random_jpeg(root / "wrong.jpg", size=(120, 160))
    random_jpeg(root / "pixel_off.jpg", size=(120, 160))
    boxes = _coco(tmp_path / "boxes.json", [(1, "right.jpg", 160, 120), (2, "wrong.jpg", 200, 150),
                                            (3, "pixel_off.jpg", 161, 120)])
    code, err, results = _predict(capsys, checkpoint, tmp_path / "out", root, "--boxes", boxes)
    assert code == 0, err
    assert sorted(r["image_id"] for r in results) == [1, 3]  # a pixel off with the boxes inside: used, said
    assert f"  {root / 'wrong.jpg'}: image is 160x120, annotation says 200x150" in err
    assert "pixel_off.jpg: image is 160x120, annotation says 161x120 (used as decoded)" in err


# --- detection results named through the dataset's annotation file ---------------------------------------


def test_detections_are_matched_through_the_annotation_file_in_sub_folders(checkpoint, tmp_path, capsys):
    root = tmp_path / "root"
    random_jpeg(root / "seqA" / "frame_a.jpg")
    random_jpeg(root / "seqB" / "frame_a.jpg", seed=1)
    annotations = _coco(tmp_path / "annotations.json", [(11, "seqA/frame_a.jpg", 80, 100),
                                                        (12, "seqB/frame_a.jpg", 80, 100)], boxes=())
    detections = tmp_path / "detections.json"
    detections.write_text(json.dumps([
        {"image_id": 12, "category_id": 1, "bbox": [5, 5, 40, 60], "score": 0.8},
        {"image_id": 11, "category_id": 1, "bbox": [10, 10, 50, 70], "score": 0.9},
        {"image_id": 11, "category_id": 1, "bbox": [20, 20, 30, 40], "score": 0.7},
        {"image_id": 99, "category_id": 1, "bbox": [20, 20, 30, 40], "score": 0.7}]))
    code, err, results = _predict(capsys, checkpoint, tmp_path / "out", root, "--boxes", detections,
                                  "--annotations", annotations)
    assert code == 0, err
    assert sorted((r["image_id"], r["file_name"], r["box_score"]) for r in results) == [
        (11, "seqA/frame_a.jpg", 0.7), (11, "seqA/frame_a.jpg", 0.9), (12, "seqB/frame_a.jpg", 0.8)]
    assert f"boxes of 1 image id(s) that {annotations} does not list are not used (e.g. 99)" in err
    # without the annotation file, names that are not numbers cannot be matched: said, with the way out
    code, err, _ = _predict(capsys, checkpoint, tmp_path / "out", root, "--boxes", detections)
    assert code == 1 and "give the dataset's annotation file with --annotations" in err


def test_numeric_detection_names_are_found_in_sub_folders(checkpoint, tmp_path, capsys):
    random_jpeg(tmp_path / "root" / "part1" / "000000000011.jpg")
    detections = tmp_path / "detections.json"
    detections.write_text(json.dumps([{"image_id": 11, "category_id": 1, "bbox": [10, 10, 50, 70], "score": 0.9}]))
    code, err, results = _predict(capsys, checkpoint, tmp_path / "out", tmp_path / "root", "--boxes", detections)
    assert code == 0, err
    assert [r["image_id"] for r in results] == [11]
