"""The synthetic COCO-format dataset: schema, determinism, visibility flags, drawing, CLI."""

import contextlib
import io
import json
import math
from collections import Counter

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from hgpose import synth
from hgpose.cli import main
from hgpose.keypoints import FLIP_PAIRS, KEYPOINT_NAMES, PERSON_CATEGORY, SKELETON

W, H = 160, 120
ANN = "annotations/person_keypoints_{}.json"


def _generate(out, seed=0, train=6, val=4):
    return synth.generate_dataset(out, train, val, (W, H), seed=seed, progress=False, workers=1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    stats = _generate(out)
    return out, stats


def _load(root, split):
    return json.loads((root / ANN.format(split)).read_text())


def test_coco_names():
    assert len(KEYPOINT_NAMES) == 17 and KEYPOINT_NAMES[0] == "nose" and KEYPOINT_NAMES[16] == "right_ankle"
    assert len(SKELETON) == 19 and SKELETON[0] == (16, 14)
    for left, right in FLIP_PAIRS:
        assert KEYPOINT_NAMES[left].replace("left_", "right_") == KEYPOINT_NAMES[right]
    assert PERSON_CATEGORY["id"] == 1 and PERSON_CATEGORY["keypoints"] == list(KEYPOINT_NAMES)


def test_layout_and_schema(dataset):
    root, stats = dataset
    for split, n in (("train2017", 6), ("val2017", 4)):
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(root / ANN.format(split)))
        data = coco.dataset
        assert set(data) == {"info", "licenses", "images", "annotations", "categories"}
        assert data["categories"] == [PERSON_CATEGORY]
        assert len(data["images"]) == n == stats[split]["images"]
        assert len(data["annotations"]) == stats[split]["people"] > 0
        sizes = {im["id"]: (im["width"], im["height"]) for im in data["images"]}
        for im in data["images"]:
            assert im["file_name"] == f"{im['id']:012d}.jpg"
            img = cv2.imread(str(root / split / im["file_name"]))
            assert img is not None and img.shape == (H, W, 3) and sizes[im["id"]] == (W, H)
        for a in data["annotations"]:
            assert a["category_id"] == 1 and a["iscrowd"] == 0 and a["image_id"] in sizes
            assert len(a["keypoints"]) == 51
            assert a["num_keypoints"] == sum(1 for v in a["keypoints"][2::3] if v > 0)
            x, y, w, h = a["bbox"]
            assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= W and y + h <= H
            assert isinstance(a["area"], float) and 0 < a["area"] <= w * h
            assert a["segmentation"] and all(len(p) >= 6 and len(p) % 2 == 0 for p in a["segmentation"])


def test_ids_unique_across_dataset(dataset):
    root, _ = dataset
    train, val = _load(root, "train2017"), _load(root, "val2017")
    image_ids = [im["id"] for d in (train, val) for im in d["images"]]
    ann_ids = [a["id"] for d in (train, val) for a in d["annotations"]]
    assert len(set(image_ids)) == len(image_ids) and len(set(ann_ids)) == len(ann_ids)


def test_keypoint_flags_and_coordinates(dataset):
    root, _ = dataset
    for split in ("train2017", "val2017"):
        for a in _load(root, split)["annotations"]:
            k = np.array(a["keypoints"], float).reshape(17, 3)
            hidden, shown = k[k[:, 2] == 0], k[k[:, 2] > 0]
            assert np.all(hidden[:, :2] == 0)
            assert np.all((shown[:, 0] >= 0) & (shown[:, 0] < W) & (shown[:, 1] >= 0) & (shown[:, 1] < H))
            x, y, w, h = a["bbox"]  # the silhouette contains every labelled joint
            assert np.all((shown[:, 0] >= x) & (shown[:, 0] <= x + w) & (shown[:, 1] >= y) & (shown[:, 1] <= y + h))
            assert set(k[:, 2].tolist()) <= {0, 1, 2}


def test_sample_has_occlusion_truncation_and_crowds():
    people, flags = Counter(), Counter()
    for i in range(40):
        _, anns = synth.render_image(np.random.default_rng([7, i]), W, H)
        people[sum(1 for a in anns if a["num_keypoints"] > 0)] += 1
        for a in anns:
            flags.update(a["keypoints"][2::3])
    assert people[1] and people[2] and people[3]
    assert flags[0] and flags[1] and flags[2] > flags[1]


def test_deterministic_for_a_seed(dataset, tmp_path):
    root, _ = dataset
    again, other = tmp_path / "again", tmp_path / "other"
    _generate(again)
    _generate(other, seed=1)
    for split in ("train2017", "val2017"):
        assert (root / ANN.format(split)).read_bytes() == (again / ANN.format(split)).read_bytes()
        assert (root / ANN.format(split)).read_bytes() != (other / ANN.format(split)).read_bytes()
        for f in sorted((root / split).iterdir()):
            assert f.read_bytes() == (again / split / f.name).read_bytes()
    assert (root / "train2017" / "000000000001.jpg").read_bytes() != (other / "train2017/000000000001.jpg").read_bytes()


def test_pool_matches_inline(dataset, tmp_path, monkeypatch):
    """Worker processes render the same images as the inline path: each image has its own seed."""
    root, _ = dataset
    monkeypatch.setattr(synth, "MIN_POOL_IMAGES", 1)
    synth.generate_dataset(tmp_path, 6, 4, (W, H), seed=0, progress=False, workers=2)
    for split in ("train2017", "val2017"):
        assert (root / ANN.format(split)).read_bytes() == (tmp_path / ANN.format(split)).read_bytes()


def test_interrupted_run_leaves_no_annotation_file(dataset, tmp_path, monkeypatch):
    _generate(tmp_path)
    calls = []

    def failing(task):
        calls.append(task)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return original(task)

    original = synth._render_task
    monkeypatch.setattr(synth, "_render_task", failing)
    with pytest.raises(KeyboardInterrupt):
        _generate(tmp_path)
    assert not (tmp_path / ANN.format("train2017")).exists()
    assert not (tmp_path / ANN.format("val2017")).exists()


def _isolated_figure(seed, height=90.0, size=200):
    rng = np.random.default_rng(seed)
    fig = synth.sample_figure(rng, height, rng.uniform(-math.pi, math.pi), synth.random_colours(rng))
    x0, y0, x1, y1 = fig.extent()
    fig.translate((size / 2 - (x0 + x1) / 2, size / 2 - (y0 + y1) / 2))
    canvas = synth.Canvas.blank(size, size)
    synth.draw_figure(canvas, fig, slot=0)
    return fig, canvas


@pytest.mark.parametrize("seed", range(6))
def test_joints_are_drawn_where_annotated(seed):
    fig, canvas = _isolated_figure(seed)
    for j in range(17):
        if not fig.labelled[j]:
            continue
        x, y = fig.keypoints[j]
        col, row = int(math.floor(x)), int(math.floor(y))
        assert canvas.image[row, col].any(), f"{KEYPOINT_NAMES[j]} at ({x:.1f}, {y:.1f}) is background"
        assert canvas.owner[row, col] > 0, "the label layer disagrees with the image"


def test_drawing_follows_pixel_convention():
    """A disc drawn at continuous (x, y) has its intensity centroid at (x, y): pixel i covers [i, i+1)."""
    canvas = synth.Canvas.blank(40, 30)
    centre = np.array([17.3, 11.8])
    canvas.disc(centre, 4.0, (255, 255, 255))
    weights = canvas.image[..., 0].astype(float)
    rows, cols = np.mgrid[0:30, 0:40]
    got = np.array([(weights * (cols + 0.5)).sum(), (weights * (rows + 0.5)).sum()]) / weights.sum()
    assert np.abs(got - centre).max() < 0.08


def test_visibility_flags_follow_the_owner_map():
    fig, canvas = _isolated_figure(0)
    owner = canvas.owner.copy()
    x, y = fig.keypoints[9]
    owner[int(y) - 2 : int(y) + 3, int(x) - 2 : int(x) + 3] = synth.OCCLUDER
    assert synth._visibility(fig, 0, owner)[9] == 1
    fig.translate((-1000.0, 0.0))  # all outside the image
    assert not synth._visibility(fig, 0, owner).any()


def test_left_and_right_limbs_look_alike_except_in_the_legacy_style():
    """No side-tied colour: a mirror image must be a person. The legacy style keeps its handed cue."""
    for seed in range(5):
        fig, _ = _isolated_figure(seed)
        for left_part, right_part in ((synth.L_FOREARM, synth.R_FOREARM), (synth.L_SHIN, synth.R_SHIN)):
            assert synth._limb_colour(fig, left_part, 1) == synth._limb_colour(fig, right_part, -1)
        fig.style = "legacy"
        left = synth._limb_colour(fig, synth.L_FOREARM, 1)
        right = synth._limb_colour(fig, synth.R_FOREARM, -1)
        shirt = fig.colours["shirt"]
        assert sum(left) > sum(shirt) + 20 and sum(right) < sum(shirt) - 20


def test_frontal_views_put_either_arm_on_top():
    """A fixed order (right arm over left) in frontal views would be a handed cue."""
    tops = Counter()
    for seed in range(60):
        fig = synth.sample_figure(np.random.default_rng(seed), 100.0, 0.0, {})
        if abs(math.sin(fig.yaw)) <= 0.35:
            tops[fig.draw_order[-1]] += 1
    assert tops[("arm", 1)] >= 3 and tops[("arm", -1)] >= 3, tops


def test_annotations_record_the_yaw_and_stay_valid_coco(dataset):
    root, _ = dataset
    coco = COCO(str(root / ANN.format("train2017")))
    yaws = [a["hgpose_yaw"] for a in coco.loadAnns(coco.getAnnIds())]
    assert yaws and all(-180 <= y <= 180 for y in yaws) and len(set(yaws)) > 1


def test_face_is_labelled_only_on_the_camera_side():
    seen = Counter()
    for seed in range(40):
        fig = synth.sample_figure(np.random.default_rng(seed), 100.0, 0.0, {})
        if math.cos(fig.yaw) > 0.5:  # facing the camera: nose and both eyes
            assert fig.labelled[:3].all()
            seen["front"] += 1
        elif math.cos(fig.yaw) < -0.75:  # facing away: no nose, no eyes, an ear
            assert not fig.labelled[:3].any() and fig.labelled[3:5].any()
            seen["back"] += 1
    assert seen["front"] and seen["back"]


def test_cli_writes_layout(tmp_path, capsys):
    out = tmp_path / "ds"
    assert main(["synth", str(out), "--train-images", "3", "--val-images", "2", "--image-size", "96x64"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert len(list((out / "train2017").glob("*.jpg"))) == 3 and len(list((out / "val2017").glob("*.jpg"))) == 2
    assert _load(out, "val2017")["images"][0]["width"] == 96


@pytest.mark.parametrize("size", ["640", "axb", "10x10", "640x480x3"])
def test_cli_rejects_bad_image_size(tmp_path, capsys, size):
    assert main(["synth", str(tmp_path / "ds"), "--image-size", size]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--image-size" in err
    assert not (tmp_path / "ds").exists()
