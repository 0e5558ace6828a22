"""Object keypoint similarity (OKS), OKS-based NMS, rescoring, and a vectorised COCO keypoint AP.

OKS is COCO's: for a ground-truth person of area s^2 and keypoint j with COCO sigma k_j,
ks_j = exp(-d_j^2 / (2 s^2 (2 k_j)^2)), averaged over the labelled (v > 0) keypoints.

`coco_keypoint_ap` recomputes pycocotools' COCOeval('keypoints') AP (area "all", maxDets 20, OKS
thresholds .50:.05:.95, the same greedy matching and interpolated precision) with numpy over all
images at once. It is what per-keypoint AP and the error analysis's "AP if fixed" run many times;
the AP that `hgpose evaluate` prints is COCOeval's own (tests check that the two agree).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# COCO's per-keypoint OKS sigmas (pycocotools Params.kpt_oks_sigmas), in KEYPOINT_NAMES order.
COCO_SIGMAS = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89]) / 10.0
OKS_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
MAX_DETECTIONS = 20  # COCOeval's maxDets for keypoints
NMS_THRESHOLD = 0.9  # the reference top-down protocol (SimpleBaselines, HRNet)
RESCORE_CONFIDENCE = 0.2  # keypoint confidences above this count in the instance score
_EPS = np.spacing(1)
_CHUNK_ELEMENTS = 4_000_000  # bound on the (images x dets x gts x 17) arrays of one chunk


# --- rescoring and OKS-NMS ------------------------------------------------------------------------


def rescore(box_scores, confidence, threshold: float = RESCORE_CONFIDENCE) -> np.ndarray:
    """The reference instance score: box score x mean of the keypoint confidences above `threshold`
    (0 when none is). box_scores (N,), confidence (N, K)."""
    confidence = np.asarray(confidence, dtype=np.float64)
    above = confidence > threshold
    count = above.sum(axis=-1)
    mean = np.where(count > 0, (confidence * above).sum(axis=-1) / np.maximum(count, 1), 0.0)
    return np.asarray(box_scores, dtype=np.float64) * mean


def _group_ranks(groups: np.ndarray, order_key: np.ndarray):
    """Sort by (group, order_key, original position); returns (order, group position, rank in group)."""
    n = len(groups)
    order = np.lexsort((np.arange(n), order_key, groups))
    sorted_groups = groups[order]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]]) if n else np.zeros(0, int)
    group_pos = np.cumsum(np.r_[False, sorted_groups[1:] != sorted_groups[:-1]]) if n else np.zeros(0, int)
    rank = np.arange(n) - starts[group_pos] if n else np.zeros(0, int)
    return order, group_pos, rank


def _chunks(count: int, per_item: int):
    step = max(1, _CHUNK_ELEMENTS // max(per_item, 1))
    for start in range(0, count, step):
        yield slice(start, min(start + step, count))


def oks_nms(image_ids, keypoints, scores, areas, threshold: float = NMS_THRESHOLD,
            sigmas=COCO_SIGMAS) -> np.ndarray:
    """Greedy OKS-NMS within each image; returns a keep mask (N,).

    In score order, a prediction is dropped when its OKS with an already kept prediction of the same
    image exceeds `threshold`. The OKS between two predictions uses all keypoints and the mean of
    their two areas (as the reference oks_nms). keypoints (N, K, 2+) image pixels; areas (N,) the
    boxes' w x h. Vectorised over images: the only loop is over score ranks within an image.
    """
    image_ids = np.asarray(image_ids)
    points = np.asarray(keypoints, dtype=np.float64)[..., :2]
    scores = np.asarray(scores, dtype=np.float64)
    areas = np.asarray(areas, dtype=np.float64)
    n = len(scores)
    keep = np.zeros(n, dtype=bool)
    if n == 0:
        return keep
    _, group_of = np.unique(image_ids, return_inverse=True)
    order, group_pos, rank = _group_ranks(group_of.reshape(-1), -scores)
    groups, width = int(group_pos[-1]) + 1, int(rank.max()) + 1
    slot = np.full((groups, width), -1, dtype=np.int64)  # slot[image, rank] = prediction index
    slot[group_pos, rank] = order
    variances = (2 * np.asarray(sigmas, dtype=np.float64)) ** 2
    for part in _chunks(groups, width * width * points.shape[1]):
        index = slot[part]
        present = index >= 0
        p = points[np.maximum(index, 0)]  # (C, W, K, 2)
        a = areas[np.maximum(index, 0)]
        d2 = ((p[:, :, None] - p[:, None, :]) ** 2).sum(-1)  # (C, W, W, K)
        mean_area = (a[:, :, None] + a[:, None, :]) / 2
        oks = np.exp(-d2 / variances / (mean_area[..., None] + _EPS) / 2).mean(-1)  # (C, W, W)
        kept = present.copy()
        for r in range(1, width):
            suppressed = (kept[:, :r] & (oks[:, :r, r] > threshold)).any(axis=1)
            kept[:, r] &= ~suppressed
        keep[index[kept]] = True
    return keep


# --- ground truth and detections as arrays ------------------------------------------------------------


@dataclass
class GroundTruth:
    """The ground-truth people COCOeval('keypoints') sees, as arrays."""

    image_ids: np.ndarray  # (G,) int64
    keypoints: np.ndarray  # (G, K, 3) float64
    areas: np.ndarray  # (G,)
    bboxes: np.ndarray  # (G, 4)
    crowd: np.ndarray  # (G,) bool
    ignore: np.ndarray  # (G,) bool: crowd or num_keypoints == 0 (COCOeval's rule for keypoints)

    @classmethod
    def from_coco(cls, coco, category_id: int = 1, image_ids=None) -> GroundTruth:
        """From a pycocotools COCO object: the category's annotations (of `image_ids` if given)."""
        ids = coco.getAnnIds(imgIds=[] if image_ids is None else [int(i) for i in image_ids], catIds=[category_id])
        anns = coco.loadAnns(ids)
        keypoints = np.array([a["keypoints"] for a in anns], dtype=np.float64).reshape(len(anns), -1, 3)
        labelled = (keypoints[..., 2] > 0).sum(-1)
        num = np.array([a.get("num_keypoints", n) for a, n in zip(anns, labelled)], dtype=np.int64)
        crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)
        return cls(
            image_ids=np.array([a["image_id"] for a in anns], dtype=np.int64),
            keypoints=keypoints,
            areas=np.array([a["area"] for a in anns], dtype=np.float64),
            bboxes=np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4),
            crowd=crowd,
            ignore=crowd | (num == 0),
        )

    def only_keypoint(self, k: int) -> GroundTruth:
        """The same people with only keypoint k labelled (a person without it becomes ignored)."""
        keypoints = self.keypoints.copy()
        others = np.ones(keypoints.shape[1], dtype=bool)
        others[k] = False
        keypoints[:, others] = 0
        return GroundTruth(self.image_ids, keypoints, self.areas, self.bboxes, self.crowd,
                           self.crowd | ~(keypoints[:, k, 2] > 0))


def results_arrays(results: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """COCO keypoint results -> image ids (D,), keypoints (D, K, 3), scores (D,)."""
    image_ids = np.array([r["image_id"] for r in results], dtype=np.int64)
    keypoints = np.array([r["keypoints"] for r in results], dtype=np.float64).reshape(len(results), -1, 3)
    scores = np.array([r["score"] for r in results], dtype=np.float64)
    return image_ids, keypoints, scores


# --- OKS between detections and ground truth, per image -----------------------------------------------


@dataclass
class ImageLayout:
    """Detections and ground truth laid out per evaluated image, as COCOeval orders them: dets by
    descending score (stable), at most max_dets each; ground truth non-ignored first (stable).
    det_slot / gt_slot (I, D) / (I, G) hold indices into the inputs, -1 for padding."""

    image_ids: np.ndarray  # (I,) sorted evaluated image ids
    det_slot: np.ndarray
    gt_slot: np.ndarray


def layout(eval_image_ids, gt: GroundTruth, det_image_ids, det_scores, max_dets: int = MAX_DETECTIONS) -> ImageLayout:
    images = np.unique(np.asarray(eval_image_ids, dtype=np.int64))

    def place(ids, key, limit=None):
        pos = np.searchsorted(images, ids)
        inside = (pos < len(images)) & (images[np.minimum(pos, len(images) - 1)] == ids) if len(images) \
            else np.zeros(len(ids), bool)
        members = np.flatnonzero(inside)
        order, _, rank = _group_ranks(pos[members], key[members])
        chosen = members[order]
        pos_sorted = pos[chosen]
        if limit is not None:
            within = rank < limit
            chosen, pos_sorted, rank = chosen[within], pos_sorted[within], rank[within]
        width = int(rank.max()) + 1 if len(rank) else 0
        slot = np.full((len(images), width), -1, dtype=np.int64)
        slot[pos_sorted, rank] = chosen
        return slot

    det_slot = place(np.asarray(det_image_ids, dtype=np.int64), -np.asarray(det_scores, dtype=np.float64), max_dets)
    gt_slot = place(gt.image_ids, gt.ignore.astype(np.float64))
    return ImageLayout(images, det_slot, gt_slot)


def keypoint_similarity(det_points, gt_points, gt_areas, sigmas=COCO_SIGMAS) -> np.ndarray:
    """Per-keypoint ks = exp(-d^2 / (2 area (2 sigma)^2)) with broadcasting: det_points (..., K, 2),
    gt_points (..., K, 2), gt_areas (...)."""
    d2 = ((np.asarray(det_points)[..., :2] - np.asarray(gt_points)[..., :2]) ** 2).sum(-1)
    variances = (2 * np.asarray(sigmas, dtype=np.float64)) ** 2
    return np.exp(-d2 / variances / (np.asarray(gt_areas)[..., None] + _EPS) / 2)


def oks_table(det_points, gt: GroundTruth, det_slot, gt_slot, sigmas=COCO_SIGMAS):
    """COCOeval's computeOks for a block of images: OKS (C, D, G) and per-keypoint ks (C, D, G, K)
    (NaN where the slot is padding). A person with no labelled keypoint is compared with its bbox
    doubled, as COCOeval does (only ignored people have none)."""
    dp = np.asarray(det_points, dtype=np.float64)[np.maximum(det_slot, 0)][..., :2]  # (C, D, K, 2)
    g = np.maximum(gt_slot, 0)
    gp, area, bbox = gt.keypoints[g], gt.areas[g], gt.bboxes[g]  # (C, G, K, 3), (C, G), (C, G, 4)
    visible = gp[..., 2] > 0  # (C, G, K)
    ks = keypoint_similarity(dp[:, :, None], gp[:, None, :, :, :2], area[:, None, :], sigmas)
    labelled = visible.sum(-1)
    oks = (ks * visible[:, None]).sum(-1) / np.maximum(labelled, 1)[:, None]
    if (labelled == 0).any():
        x0, y0 = bbox[..., 0] - bbox[..., 2], bbox[..., 1] - bbox[..., 3]
        x1, y1 = bbox[..., 0] + 2 * bbox[..., 2], bbox[..., 1] + 2 * bbox[..., 3]
        xd, yd = dp[:, :, None, :, 0], dp[:, :, None, :, 1]  # (C, D, 1, K)
        dx = np.maximum(0, x0[:, None, :, None] - xd) + np.maximum(0, xd - x1[:, None, :, None])
        dy = np.maximum(0, y0[:, None, :, None] - yd) + np.maximum(0, yd - y1[:, None, :, None])
        outside = np.zeros_like(dx)  # distance 0 to the doubled box
        box_ks = keypoint_similarity(np.stack([dx, dy], -1), np.stack([outside, outside], -1),
                                     area[:, None, :], sigmas)
        oks = np.where(labelled[:, None, :] > 0, oks, box_ks.mean(-1))
    invalid = (det_slot < 0)[:, :, None] | (gt_slot < 0)[:, None, :]
    oks[invalid] = np.nan
    return oks, ks


def _last_argmax(values: np.ndarray) -> np.ndarray:
    """Index of the last maximum along the last axis (COCOeval keeps the later of equal matches)."""
    return values.shape[-1] - 1 - np.argmax(values[..., ::-1], axis=-1)


def greedy_match(oks: np.ndarray, present: np.ndarray, gt_ignore: np.ndarray, gt_crowd: np.ndarray,
                 thresholds) -> tuple[np.ndarray, np.ndarray]:
    """COCOeval's evaluateImg matching for a block of images, every threshold at once.

    oks (C, D, G) with dets in score order; present (C, D); gt_ignore / gt_crowd (C, G), False for
    padding. Returns the matched person's slot (T, C, D), -1 for none, and matched_ignored (T, C, D):
    a det matched to an ignored person is ignored. Each det takes the highest-OKS person still free
    (a crowd is never used up) with OKS >= t, preferring non-ignored people."""
    thresholds = np.minimum(np.asarray(thresholds, dtype=np.float64), 1 - 1e-10)
    t_count, (c, d, g) = len(thresholds), oks.shape
    matched = np.full((t_count, c, d), -1, dtype=np.int64)
    matched_ignored = np.zeros((t_count, c, d), dtype=bool)
    if g == 0 or d == 0:
        return matched, matched_ignored
    taken = np.zeros((t_count, c, g), dtype=bool)
    valid_gt = ~np.isnan(oks).all(axis=1)  # (C, G)
    rows = np.arange(c)
    for r in range(d):  # score rank: the only loop, over at most max_dets
        iou = np.nan_to_num(oks[:, r, :], nan=-1.0)  # (C, G)
        free = (~taken | gt_crowd[None]) & valid_gt[None]
        candidate = free & (iou[None] >= thresholds[:, None, None]) & present[None, :, r, None]
        kept, ignored = candidate & ~gt_ignore[None], candidate & gt_ignore[None]
        has_kept = kept.any(-1)
        choice = np.where(has_kept, _last_argmax(np.where(kept, iou[None], -2.0)),
                          _last_argmax(np.where(ignored, iou[None], -2.0)))  # (T, C)
        found = has_kept | ignored.any(-1)
        matched[:, :, r] = np.where(found, choice, -1)
        matched_ignored[:, :, r] = found & gt_ignore[rows[None], choice]
        t_idx, c_idx = np.nonzero(found)
        taken[t_idx, c_idx, choice[t_idx, c_idx]] = True
    return matched, matched_ignored


def coco_keypoint_ap(gt: GroundTruth, det_image_ids, det_keypoints, det_scores, eval_image_ids=None,
                     max_dets: int = MAX_DETECTIONS, sigmas=COCO_SIGMAS, thresholds=OKS_THRESHOLDS) -> float | None:
    """COCOeval('keypoints') AP over area "all" at maxDets, vectorised; None when no person counts.

    eval_image_ids: the images evaluated (COCOeval's params.imgIds), default those of `gt`."""
    det_image_ids = np.asarray(det_image_ids, dtype=np.int64)
    det_scores = np.asarray(det_scores, dtype=np.float64)
    eval_image_ids = np.unique(gt.image_ids if eval_image_ids is None else np.asarray(eval_image_ids, np.int64))
    places = layout(eval_image_ids, gt, det_image_ids, det_scores, max_dets)
    gt_counted = int((~gt.ignore[places.gt_slot[places.gt_slot >= 0]]).sum())
    if gt_counted == 0:
        return None
    per_image = places.det_slot.shape[1] * max(places.gt_slot.shape[1], 1) * gt.keypoints.shape[1]
    matched_parts, ignored_parts = [], []
    for part in _chunks(len(places.image_ids), per_image):
        det_slot, gt_slot = places.det_slot[part], places.gt_slot[part]
        oks, _ = oks_table(det_keypoints, gt, det_slot, gt_slot, sigmas)
        padding = gt_slot < 0
        ignore = np.where(padding, False, gt.ignore[np.maximum(gt_slot, 0)])
        crowd = np.where(padding, False, gt.crowd[np.maximum(gt_slot, 0)])
        matched, ignored = greedy_match(oks, det_slot >= 0, ignore, crowd, thresholds)
        matched_parts.append(matched)
        ignored_parts.append(ignored)
    matched = np.concatenate(matched_parts, axis=1) >= 0  # (T, I, D)
    ignored = np.concatenate(ignored_parts, axis=1)
    present = places.det_slot >= 0
    # COCOeval's accumulate: dets of all images (image order, then score order), sorted by score
    scores = det_scores[places.det_slot[present]]
    order = np.argsort(-scores, kind="mergesort")
    matched, ignored = matched[:, present][:, order], ignored[:, present][:, order]
    tp = np.cumsum(matched & ~ignored, axis=1).astype(np.float64)
    fp = np.cumsum(~matched & ~ignored, axis=1).astype(np.float64)
    precision = np.zeros((len(thresholds), len(RECALL_THRESHOLDS)))
    for t in range(len(thresholds)):
        if not tp.shape[1]:
            continue
        recall = tp[t] / gt_counted
        prec = tp[t] / (fp[t] + tp[t] + _EPS)
        prec = np.maximum.accumulate(prec[::-1])[::-1]
        at = np.searchsorted(recall, RECALL_THRESHOLDS, side="left")
        within = at < len(prec)
        precision[t, within] = prec[at[within]]
    return float(precision.mean())
