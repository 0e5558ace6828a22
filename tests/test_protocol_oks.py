"""OKS, OKS-NMS, the vectorised COCO keypoint AP (against pycocotools) and the error analysis."""

import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from hgpose.evaluation.errors import ERROR_TYPES, analyze_errors, error_figure, per_keypoint_ap
from hgpose.evaluation.oks import GroundTruth, coco_keypoint_ap, oks_nms, rescore, results_arrays
from hgpose.keypoints import PERSON_CATEGORY, flip_permutation


def random_scene(seed: int, images: int = 25, noise=(0.3, 6.0)):
    """Ground truth (crowds and people without keypoints included) and noisy predictions: near
    duplicates, background predictions, images without people."""
    rng = np.random.default_rng(seed)
    image_entries, anns, results = [], [], []
    for i in range(1, images + 1):
        image_entries.append({"id": i, "file_name": f"{i}.jpg", "width": 200, "height": 200})
        for p in range(rng.integers(0, 5)):
            x, y, w, h = *rng.uniform(0, 100, 2), *rng.uniform(10, 100, 2)
            v = rng.choice([0, 1, 2], 17, p=[0.3, 0.2, 0.5])
            if p == 3:
                v[:] = 0
            kp = np.stack([rng.uniform(x, x + w, 17), rng.uniform(y, y + h, 17), v], -1) * (v > 0)[:, None]
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": 1, "iscrowd": int(rng.random() < 0.1),
                         "bbox": [x, y, w, h], "area": w * h * 0.6, "num_keypoints": int((v > 0).sum()),
                         "keypoints": kp.ravel().tolist()})
            for _ in range(rng.integers(0, 3)):
                det = kp[:, :2] + rng.normal(0, rng.uniform(*noise), (17, 2))
                results.append({"image_id": i, "category_id": 1, "score": float(rng.choice([0.5, rng.random()])),
                                "keypoints": np.c_[det, rng.random(17)].ravel().tolist()})
        for _ in range(rng.integers(0, 3)):
            points = np.c_[rng.uniform(0, 200, (17, 2)), rng.random(17)]
            results.append({"image_id": i, "category_id": 1, "keypoints": points.ravel().tolist(),
                            "score": float(rng.random())})
    coco = _coco({"images": image_entries, "annotations": anns, "categories": [PERSON_CATEGORY]})
    return coco, results


def _coco(data) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = data
        coco.createIndex()
    return coco


def cocoeval_ap(coco: COCO, results) -> float:
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(coco, coco.loadRes([dict(r) for r in results]), "keypoints")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_ap_equals_cocoeval(seed):
    coco, results = random_scene(seed)
    ap = coco_keypoint_ap(GroundTruth.from_coco(coco), *results_arrays(results), eval_image_ids=coco.getImgIds())
    expected = cocoeval_ap(coco, results)
    assert 0.02 < expected < 0.98  # a non-trivial case
    assert ap == pytest.approx(expected, abs=1e-12)


def test_per_keypoint_ap_equals_cocoeval_on_ground_truth_with_one_keypoint():
    coco, results = random_scene(3)
    aps = per_keypoint_ap(GroundTruth.from_coco(coco), *results_arrays(results), eval_image_ids=coco.getImgIds())
    for k in (0, 5, 16):
        data = {**coco.dataset, "annotations": []}
        for ann in coco.dataset["annotations"]:
            kp = np.array(ann["keypoints"], dtype=np.float64).reshape(17, 3)
            kp[np.arange(17) != k] = 0
            data["annotations"].append({**ann, "keypoints": kp.ravel().tolist(), "num_keypoints": int(kp[k, 2] > 0)})
        assert list(aps.values())[k] == pytest.approx(cocoeval_ap(_coco(data), results), abs=1e-12)
    assert len(set(aps.values())) > 5  # the keypoints differ


def test_rescore_is_box_score_times_mean_confident_keypoint():
    confidence = np.array([[0.1, 0.3, 0.5], [0.1, 0.2, 0.05]])
    np.testing.assert_allclose(rescore([0.5, 0.9], confidence), [0.5 * 0.4, 0.0])


def _person(cx, cy, scale=1.0):
    """17 keypoints of an upright person ~100 px tall centred at (cx, cy), facing the camera: each
    left/right pair at the same height, 16-30 px apart."""
    half_widths = [0, 6, 6, 9, 9, 15, 15, 14, 14, 12, 12, 10, 10, 9, 9, 8, 8]
    heights = [-50, -53, -53, -50, -50, -35, -35, -15, -15, 0, 0, 5, 5, 25, 25, 48, 48]
    side = np.array([0] + [1, -1] * 8)  # COCO: odd indices are left keypoints (on the image's right)
    base = np.c_[side * np.array(half_widths) * 2, heights].astype(np.float64) * scale
    return base + [cx, cy]


def test_oks_nms_removes_a_duplicate_and_keeps_two_overlapping_people():
    a, b = _person(100, 100), _person(125, 100)  # two people whose boxes overlap heavily
    duplicate = a + 1.0  # the same person found twice, a pixel apart
    far = _person(400, 100)
    keypoints = np.stack([a, duplicate, b, far, a])
    image_ids = np.array([1, 1, 1, 1, 2])  # the last one is on another image: never compared
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.1])
    areas = np.full(5, 40 * 100.0)
    keep = oks_nms(image_ids, keypoints, scores, areas, threshold=0.9)
    assert keep.tolist() == [True, False, True, True, True]
    # the lower-scored copy goes, whichever comes first in the input
    keep = oks_nms(image_ids[[1, 0]], keypoints[[1, 0]], scores[[1, 0]], areas[:2])
    assert keep.tolist() == [False, True]


def test_oks_nms_greedy_chain():
    # b overlaps a and c, a and c do not overlap: greedy keeps a, drops b, then keeps c
    a = _person(100, 100)
    b, c = a + 3.0, a + 6.0
    keep = oks_nms([1, 1, 1], np.stack([a, b, c]), [0.9, 0.8, 0.7], np.full(3, 30000.0), threshold=0.9)
    assert keep.tolist() == [True, False, True]


def fully_labelled_scene():
    """Three people on two images, every keypoint labelled, two of them side by side."""
    people = [(1, _person(100, 100)), (1, _person(180, 110, 1.1)), (2, _person(120, 90, 0.9))]
    anns = [{"id": i + 1, "image_id": img, "category_id": 1, "iscrowd": 0, "area": 3000.0,
             "bbox": [p[:, 0].min(), p[:, 1].min(), np.ptp(p[:, 0]), np.ptp(p[:, 1])], "num_keypoints": 17,
             "keypoints": np.c_[p, np.full(17, 2)].ravel().tolist()} for i, (img, p) in enumerate(people)]
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 400, "height": 300} for i in (1, 2)]
    return _coco({"images": images, "annotations": anns, "categories": [PERSON_CATEGORY]})


def test_ground_truth_results_give_ap_1_and_every_keypoint_good():
    coco = fully_labelled_scene()
    gt = GroundTruth.from_coco(coco)
    analysis = analyze_errors(gt, gt.image_ids, gt.keypoints, np.ones(len(gt.image_ids)))
    result = analysis.to_dict()
    assert analysis.ap == 1.0
    assert result["overall"] == {"good": 51, "jitter": 0, "inversion": 0, "swap": 0, "miss": 0}
    assert all(v == 1.0 for v in result["ap_if_fixed"].values())


def test_left_right_swapped_results_are_inversions():
    coco = fully_labelled_scene()
    gt = GroundTruth.from_coco(coco)
    swapped = gt.keypoints[:, flip_permutation()]
    analysis = analyze_errors(gt, gt.image_ids, swapped, np.ones(3), keep_fixed=True)
    result = analysis.to_dict()
    assert result["per_joint"]["nose"] == {"good": 3, "jitter": 0, "inversion": 0, "swap": 0, "miss": 0}
    for name, row in result["per_joint"].items():
        if name != "nose":
            assert row["inversion"] == 3, (name, row)
    assert analysis.ap < 0.5 and analysis.ap_fixed["inversion"] == 1.0
    np.testing.assert_allclose(analysis.fixed_keypoints["inversion"], gt.keypoints)
    fig = error_figure(result)
    assert len(fig.axes) == 2


def test_swap_jitter_and_miss_are_told_apart():
    coco = fully_labelled_scene()
    gt = GroundTruth.from_coco(coco)
    pred = gt.keypoints.copy()
    pred[0, 0, :2] = gt.keypoints[1, 0, :2]  # person 0's nose on person 1's nose: a swap
    pred[0, 9, :2] += 3.0  # a wrist a little off: jitter (ks between 0.5 and 0.85)
    pred[0, 15, :2] += 60.0  # an ankle far from everything: miss
    result = analyze_errors(gt, gt.image_ids, pred, np.ones(3)).to_dict()
    assert result["per_joint"]["nose"]["swap"] == 1
    assert result["per_joint"]["left_wrist"]["jitter"] == 1
    assert result["per_joint"]["left_ankle"]["miss"] == 1
    assert sum(result["overall"].values()) == 51 and result["overall"]["good"] == 48
    assert set(result["overall"]) == set(ERROR_TYPES)
