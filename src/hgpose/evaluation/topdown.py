"""The COCO top-down protocol on detected boxes, and the AP analyses shared with ground-truth boxes.

Detected boxes (hgpose.data.person_boxes) are cropped as ground-truth boxes and run through the model
(optionally with the flip test and DARK decoding); each instance is rescored as box score x the mean
of its keypoint confidences above 0.2; OKS-NMS at 0.9 (COCO sigmas, each person's scale the area of
its padded crop, as mmpose and HRNet) runs per image; COCOeval
('keypoints', maxDets 20) scores the rest over every image of the annotation file (as the
reference protocol, which evaluates all of val2017), leaving out images that could not be read.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from hgpose.data.dataset import PersonDataset
from hgpose.data.loader import make_loader
from hgpose.data.person_boxes import detection_index
from hgpose.data.transforms import frame_to_image
from hgpose.evaluation.coco import coco_keypoint_stats, coco_results
from hgpose.evaluation.errors import analyze_errors, error_figure, per_keypoint_ap
from hgpose.evaluation.inference import infer
from hgpose.evaluation.oks import NMS_THRESHOLD, RESCORE_CONFIDENCE, GroundTruth, oks_nms, rescore, results_arrays
from hgpose.keypoints import person_category_id
from hgpose.runtime.files import atomic_path

GROUND_TRUTH_BOXES = "ground-truth boxes"


def person_category(coco) -> int:
    return person_category_id(coco.dataset.get("categories", []))


def ap_analysis(coco, results: list[dict], image_ids) -> dict:
    """Per-keypoint AP and the Ronchi-Perona error breakdown of a results list (None when empty)."""
    if not results:
        return {"per_keypoint_ap": None, "errors": None}
    image_ids = np.unique(np.asarray(image_ids, dtype=np.int64))
    gt = GroundTruth.from_coco(coco, person_category(coco), image_ids)
    det_ids, keypoints, scores = results_arrays(results)
    return {
        "per_keypoint_ap": per_keypoint_ap(gt, det_ids, keypoints, scores, image_ids),
        "errors": analyze_errors(gt, det_ids, keypoints, scores, image_ids).to_dict(),
    }


def evaluate_detected_boxes(model, detections, annotation_file, image_dir, split: str, coco, *, input_size: int,
                            batch_size: int, device, precision: str, workers: int = 0, flip_test: bool = False,
                            decode: str = "quarter", nms_threshold: float = NMS_THRESHOLD,
                            progress: bool = True, only_images=None) -> tuple[dict, list[dict]]:
    """Run `model` on every kept detection, rescore, OKS-NMS, COCOeval. Returns the JSON-ready block
    (every number labelled "detected boxes: FILE") and the COCO results list it scored.
    only_images restricts the evaluated images (a held-out part of an annotation file)."""
    if only_images is not None:  # boxes on other images are not even cropped
        outside = ~np.isin(detections.image_ids, only_images)
        detections.skipped["image outside the split"] = int(outside.sum())
        detections = replace(detections, image_ids=detections.image_ids[~outside],
                             bboxes=detections.bboxes[~outside], scores=detections.scores[~outside])
    index, positions, all_image_ids = detection_index(detections, annotation_file, image_dir, split)
    if only_images is not None:
        all_image_ids = np.intersect1d(all_image_ids, only_images)
    block = {
        "boxes": detections.label(),
        "file": str(detections.source),
        "min_box_score": detections.min_score,
        "boxes_in_file": detections.total,
        "boxes_skipped": {k: v for k, v in detections.skipped.items() if v},
        "boxes_evaluated": len(index),
        "rescoring": f"box score x mean keypoint confidence above {RESCORE_CONFIDENCE}",
        "nms": f"OKS-NMS per image at {nms_threshold} (COCO sigmas, scale: the padded crop's area)",
    }
    results: list[dict] = []
    unreadable_images = np.zeros(0, dtype=np.int64)
    if len(index):
        dataset = PersonDataset(index, input_size=input_size, cache="off")
        loader = make_loader(dataset, batch_size, shuffle=False, workers=workers, device=device)
        inference = infer(model, loader, device=device, precision=precision, compute_loss=False, progress=progress,
                          desc=f"detected boxes {split}", flip_test=flip_test, decode=decode)
        valid = inference.valid
        rows = inference.indices[valid]
        points = frame_to_image(inference.coords[valid], dataset.boxes[rows], dataset.heatmap_size)
        confidence = inference.confidence[valid]
        scores = rescore(detections.scores[positions[rows]], confidence)
        image_ids = index.image_ids[rows]
        # OKS-NMS's scale of each detected person is the area of its padded crop (the square the model
        # saw), as in mmpose (the product of bbox_scale, the padded box) and HRNet (np.prod(s * 200)),
        # not the detector's w x h: their published detected-box APs are computed so.
        areas = dataset.boxes[rows, 2].astype(np.float64) ** 2
        keep = oks_nms(image_ids, points, scores, areas, nms_threshold)
        results = coco_results(image_ids[keep], points[keep], confidence[keep], person_category(coco))
        for entry, score in zip(results, scores[keep]):
            entry["score"] = float(score)
        unreadable_images = np.unique(index.image_ids[inference.indices[~valid]])
        if (~valid).any():
            block["boxes_skipped"]["unreadable image"] = int((~valid).sum())
        block.update(unreadable=int((~valid).sum()), instances_before_nms=int(valid.sum()),
                     instances_after_nms=int(keep.sum()))
    block["boxes_cropped"] = block.get("instances_before_nms", 0)  # what the model really saw
    eval_image_ids = np.setdiff1d(all_image_ids, unreadable_images)
    block["images_evaluated"] = int(len(eval_image_ids))
    block["coco"] = coco_keypoint_stats(coco, results, eval_image_ids)
    block.update(ap_analysis(coco, results, eval_image_ids))
    return block, results


def write_error_figures(result: dict, out: Path) -> list[Path]:
    """`evaluate --plots`: the error breakdown of each box source as OUT_errors.png (ground-truth
    boxes) and OUT_errors_detected.png (detected boxes)."""
    written = []
    blocks = [("errors", result.get("errors"), result.get("coco_boxes", GROUND_TRUTH_BOXES))]
    if result.get("detected_boxes"):
        blocks.append(("errors_detected", result["detected_boxes"]["errors"], result["detected_boxes"]["boxes"]))
    for suffix, errors, label in blocks:
        if not errors:
            continue
        path = out.with_name(f"{out.stem}_{suffix}.png")
        fig = error_figure(errors, title=f"Keypoint errors, {label} (Ronchi & Perona)")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
        written.append(path)
    return written
