"""COCO keypoint AP with pycocotools: results in COCO's format, the ground truth as hgpose reads the
file, and COCOeval's summary."""

from __future__ import annotations

import contextlib
import io
import math
import sys
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from hgpose.data.coco import read_annotation_json
from hgpose.evaluation.oks import AREA_PER_BOX_AREA, area_from_bbox
from hgpose.keypoints import person_category_id
from hgpose.runtime.files import UserError

COCO_STAT_NAMES = ("AP", "AP50", "AP75", "AP_M", "AP_L", "AR", "AR50", "AR75", "AR_M", "AR_L")


def coco_results(image_ids, image_points, confidence, category_id: int = 1) -> list[dict]:
    """COCO keypoint results: one per instance, (x, y, confidence) triplets, score = mean confidence;
    category_id: the person category of the dataset they belong to."""
    confidence = np.asarray(confidence, np.float64)  # rounded in float64: 0.0833, not 0.08330000191926956
    triplets = np.concatenate([np.round(image_points, 2), np.round(confidence[..., None], 4)], axis=-1)
    scores = confidence.mean(axis=-1)
    return [
        {"image_id": int(i), "category_id": int(category_id), "keypoints": t.reshape(-1).tolist(), "score": float(s)}
        for i, t, s in zip(image_ids, triplets.astype(np.float64), scores)
    ]


def coco_keypoint_stats(annotation_file, results: list[dict], image_ids) -> dict[str, float | None]:
    """pycocotools COCOeval('keypoints') summary stats over `image_ids`; None where undefined
    (pycocotools' -1). From a file, the ground truth holds only those images and their annotations
    (coco_ground_truth); a COCO object is used as it is. Its printing is silenced."""
    if not results:
        return dict.fromkeys(COCO_STAT_NAMES)
    image_ids = sorted({int(i) for i in image_ids})
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = annotation_file if isinstance(annotation_file, COCO) \
            else coco_ground_truth(annotation_file, image_ids)
        coco_dt = coco_gt.loadRes([dict(r) for r in results])  # loadRes adds fields to its input
        evaluator = COCOeval(coco_gt, coco_dt, iouType="keypoints")
        evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: (None if v < 0 else float(v)) for name, v in zip(COCO_STAT_NAMES, evaluator.stats)}


def add_coco_stats(result: dict, index, image_ids, ground_truth_images=None):
    """result["coco"] = COCO keypoint AP of result["coco_results"] over the readable `image_ids`, scored
    against coco_ground_truth(index, ground_truth_images) (None: every image of the file), which is
    returned for further analyses. A pycocotools failure is recorded in result["coco_error"] (one line)
    instead of raised, and None returned, so the PCK figures computed before are never lost."""
    try:
        coco = coco_ground_truth(index, ground_truth_images)
        result["coco"] = coco_keypoint_stats(coco, result["coco_results"], image_ids)
        return coco
    except UserError:
        raise
    except Exception as exc:  # pycocotools on a file from another tool: report, keep the rest
        reason = f"a ground-truth annotation has no {exc}" if isinstance(exc, KeyError) \
            else f"{type(exc).__name__}: {exc}"
        result["coco"] = None
        result["coco_error"] = f"{index.annotation_file}: COCO AP not computed ({reason})"[:300]
        return None


def coco_ground_truth(index, image_ids=None):
    """The ground truth COCOeval scores, as hgpose reads the file: the person category's annotations,
    with what COCOeval needs filled in where another tool left it out (area from the bbox as
    evaluation.oks.area_from_bbox, said in one line; iscrowd 0,
    num_keypoints from the keypoints), and the people hgpose drops (degenerate box, no keypoint on the
    image, ...) marked ignored (num_keypoints 0, as COCOeval ignores unlabelled people), so that
    predicting every kept person perfectly scores AP 1.

    `index`: a PersonIndex (or anything with .annotation_file, optionally .ann_ids and .category_id),
    or the annotation file itself (every person kept). With `image_ids`, only those images and their
    annotations are indexed (segmentation is always dropped: keypoint OKS never reads it), so scoring
    7.5k held-out people indexes those, not all of train2017's."""
    if isinstance(index, (str, Path)):
        annotation_file, category_id, ann_ids = Path(index), None, None
    else:
        annotation_file = Path(index.annotation_file)
        category_id = getattr(index, "category_id", 1)
        ann_ids = getattr(index, "ann_ids", None)  # None: an index-like object that keeps every person
    data = read_annotation_json(annotation_file)
    if category_id is None:  # a bare file: its person category, as every reader finds it
        category_id = person_category_id(data["categories"])
    wanted = None if image_ids is None else {int(i) for i in image_ids}
    kept = None if ann_ids is None else set(np.asarray(ann_ids).tolist())
    people, without_area = [], 0
    for ann in data["annotations"]:
        if ann.get("category_id") != category_id:
            continue
        if wanted is not None and ann.get("image_id") not in wanted:
            continue
        ann = {k: v for k, v in ann.items() if k != "segmentation"}  # unused by keypoint AP
        ann.setdefault("iscrowd", 0)
        visibility = ann.get("keypoints", [])[2::3]
        ann.setdefault("num_keypoints", sum(1 for v in visibility if isinstance(v, (int, float)) and v > 0))
        if not _is_finite_number(ann.get("area")):
            box = ann.get("bbox")
            ann["area"] = area_from_bbox(box) if isinstance(box, list) and len(box) == 4 \
                and all(_is_finite_number(v) for v in box) else 0.0
            without_area += not ann["iscrowd"]  # a crowd region is ignored by keypoint AP whatever its area
        if kept is not None and not ann["iscrowd"] and ann.get("id") not in kept:
            ann["num_keypoints"] = 0  # dropped by hgpose: ignored, neither matched nor missed
        people.append(ann)
    if without_area:
        print(f"note: {annotation_file}: {without_area} of {len(people)} person annotations have no 'area'; "
              f"their OKS scale is {AREA_PER_BOX_AREA} x bbox width x height (xtcocotools' use_area=False, as "
              "mmpose scores PoseTrack)", file=sys.stderr)
    categories = [c for c in data["categories"] if isinstance(c, dict) and c.get("id") == category_id]
    coco = COCO()
    images = data["images"] if wanted is None else [im for im in data["images"] if im.get("id") in wanted]
    del data
    coco.dataset = {"images": images, "annotations": people, "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _is_finite_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
