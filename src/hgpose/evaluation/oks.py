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


def _blocks(places, per_pair: int):
    """Chunks of images with similar prediction and person counts, trimmed to their own widths (so
    one crowded image does not pad the rest): yields (image positions, det_slot, gt_slot)."""
    det_count = (places.det_slot >= 0).sum(axis=1)
    gt_count = (places.gt_slot >= 0).sum(axis=1)
    order = np.lexsort((det_count, gt_count))
    start = 0
    while start < len(order):
        width = max(int(det_count[order[start]]), 1) * max(int(gt_count[order[start]]), 1)
        step = max(1, _CHUNK_ELEMENTS // (width * per_pair))
        chosen = order[start : start + step]
        det_width, gt_width = int(det_count[chosen].max()), int(gt_count[chosen].max())
        while len(chosen) > 1 and det_width * gt_width * per_pair * len(chosen) > 2 * _CHUNK_ELEMENTS:
            chosen = chosen[: len(chosen) // 2]
            det_width, gt_width = int(det_count[chosen].max()), int(gt_count[chosen].max())
        yield chosen, places.det_slot[chosen, :det_width], places.gt_slot[chosen, :gt_width]
        start += len(chosen)


def oks_nms(image_ids, keypoints, scores, areas, threshold: float = NMS_THRESHOLD,
            sigmas=COCO_SIGMAS) -> np.ndarray:
    """Greedy OKS-NMS within each image; returns a keep mask (N,).

    In score order, a prediction is dropped when its OKS with an already kept prediction of the same
    image exceeds `threshold`. The OKS between two predictions uses all keypoints and the mean of
    their two areas (as the reference oks_nms). keypoints (N, K, 2+) image pixels; areas (N,) each
    prediction's scale (hgpose.evaluation.topdown passes its padded crop's area, as mmpose and HRNet do).
    Vectorised over images: images holding the same number n of predictions are done together as
    (images, n, n) OKS arrays (no padding); the only loop is over score ranks.
    """
    image_ids = np.asarray(image_ids)
    points = np.asarray(keypoints, dtype=np.float64)[..., :2]
    scores = np.asarray(scores, dtype=np.float64)
    areas = np.asarray(areas, dtype=np.float64)
    n = len(scores)
    if n == 0:
        return np.zeros(0, dtype=bool)
    keep = np.ones(n, dtype=bool)
    _, group_of = np.unique(image_ids, return_inverse=True)
    order, group_pos, rank = _group_ranks(group_of.reshape(-1), -scores)
    counts = np.bincount(group_pos)
    slot = np.full((len(counts), int(counts.max())), -1, dtype=np.int64)  # slot[image, rank] = prediction
    slot[group_pos, rank] = order
    variances = (2 * np.asarray(sigmas, dtype=np.float64)) ** 2
    for width in np.unique(counts[counts > 1]):
        images = np.flatnonzero(counts == width)
        for part in _chunks(len(images), int(width) ** 2 * points.shape[1]):
            index = slot[images[part], :width]  # (C, n), every slot filled
            p, a = points[index], areas[index]
            d2 = (p[:, :, None, :, 0] - p[:, None, :, :, 0]) ** 2 + (p[:, :, None, :, 1] - p[:, None, :, :, 1]) ** 2
            mean_area = (a[:, :, None] + a[:, None, :]) / 2 + _EPS
            oks = np.exp(-d2 / (variances * 2 * mean_area[..., None])).mean(-1)  # (C, n, n)
            kept = np.ones(index.shape, dtype=bool)
            for r in range(1, int(width)):
                kept[:, r] = ~(kept[:, :r] & (oks[:, :r, r] > threshold)).any(axis=1)
            keep[index] = kept
    return keep


# --- ground truth and detections as arrays ------------------------------------------------------------


# Ground truth without `area` (PoseTrack-style files): xtcocotools' COCOeval with use_area=False
# scales OKS by bbox w * h * 0.53 (cocoeval.py, computeOks), and mmpose scores PoseTrack18 that way
# (PoseTrack18Metric sets use_area=False). The 0.53 makes a box about as large as the segmented
# area COCO would give; the bare box area (1/0.53 = 1.9x larger) would inflate AP.
AREA_PER_BOX_AREA = 0.53


def area_from_bbox(bbox) -> float:
    """The OKS area of a ground-truth person that has a bbox but no `area` (see AREA_PER_BOX_AREA)."""
    return float(bbox[2]) * float(bbox[3]) * AREA_PER_BOX_AREA


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
    det_points, gt_points = np.asarray(det_points), np.asarray(gt_points)
    d2 = (det_points[..., 0] - gt_points[..., 0]) ** 2 + (det_points[..., 1] - gt_points[..., 1]) ** 2
    variances = (2 * np.asarray(sigmas, dtype=np.float64)) ** 2
    return np.exp(-d2 / (variances * 2 * (np.asarray(gt_areas)[..., None] + _EPS)))


@dataclass
class Pairs:
    """Every (prediction, person) pair of the same image in a block of images: slot positions
    (c, d, g) in the (C, D, G) layout and indices into the inputs."""

    c: np.ndarray
    d: np.ndarray
    g: np.ndarray
    det: np.ndarray
    gt: np.ndarray
    shape: tuple[int, int, int]

    def scatter(self, values: np.ndarray, fill=np.nan) -> np.ndarray:
        """Pair values (P, ...) -> a padded (C, D, G, ...) array."""
        out = np.full((*self.shape, *values.shape[1:]), fill, dtype=np.result_type(values, type(fill)))
        out[self.c, self.d, self.g] = values
        return out

    def subset(self, mask: np.ndarray) -> Pairs:
        return Pairs(self.c[mask], self.d[mask], self.g[mask], self.det[mask], self.gt[mask], self.shape)


def pairs_of(det_slot: np.ndarray, gt_slot: np.ndarray) -> Pairs:
    c, d, g = np.nonzero((det_slot >= 0)[:, :, None] & (gt_slot >= 0)[:, None, :])
    return Pairs(c, d, g, det_slot[c, d], gt_slot[c, g], (len(det_slot), det_slot.shape[1], gt_slot.shape[1]))


def box_oks(det_points, gt: GroundTruth, pairs: Pairs, sigmas=COCO_SIGMAS) -> np.ndarray:
    """COCOeval's OKS against a person with no labelled keypoint (P,): each predicted keypoint's
    distance to the person's bbox doubled on every side (0 inside it), all keypoints averaged."""
    det_points = np.asarray(det_points, dtype=np.float64)
    x, y = det_points[pairs.det, :, 0], det_points[pairs.det, :, 1]  # (P, K)
    bx, by, bw, bh = (v[:, None] for v in gt.bboxes[pairs.gt].T)
    dx = np.maximum(0, bx - bw - x) + np.maximum(0, x - (bx + 2 * bw))
    dy = np.maximum(0, by - bh - y) + np.maximum(0, y - (by + 2 * bh))
    variances = (2 * np.asarray(sigmas, dtype=np.float64)) ** 2
    return np.exp(-(dx**2 + dy**2) / (variances * 2 * (gt.areas[pairs.gt][:, None] + _EPS))).mean(-1)


def pair_oks(det_points, gt: GroundTruth, pairs: Pairs, sigmas=COCO_SIGMAS):
    """COCOeval's computeOks on pairs: OKS (P,) and per-keypoint ks (P, K)."""
    det_points = np.asarray(det_points, dtype=np.float64)[..., :2]
    ks = keypoint_similarity(det_points[pairs.det], gt.keypoints[pairs.gt, :, :2], gt.areas[pairs.gt], sigmas)
    visible = gt.keypoints[pairs.gt, :, 2] > 0
    labelled = visible.sum(-1)
    oks = (ks * visible).sum(-1) / np.maximum(labelled, 1)
    unlabelled = labelled == 0  # only ignored people have none
    if unlabelled.any():
        oks[unlabelled] = box_oks(det_points, gt, pairs.subset(unlabelled), sigmas)
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
    oks = np.nan_to_num(oks, nan=-1.0)
    preference = np.where(gt_ignore, 0.0, 2.0)[None]  # a non-ignored person outranks any ignored one
    rows = np.arange(c)
    for r in range(d):  # score rank: the only loop, over at most max_dets
        iou = oks[:, r, :]  # (C, G)
        free = (~taken | gt_crowd[None]) & valid_gt[None]
        candidate = free & (iou[None] >= thresholds[:, None, None]) & present[None, :, r, None]
        choice = _last_argmax(np.where(candidate, iou[None] + preference, -np.inf))  # (T, C)
        found = candidate.any(-1)
        matched[:, :, r] = np.where(found, choice, -1)
        matched_ignored[:, :, r] = found & gt_ignore[rows[None], choice]
        t_idx, c_idx = np.nonzero(found)
        taken[t_idx, c_idx, choice[t_idx, c_idx]] = True
    return matched, matched_ignored


def coco_keypoint_ap(gt: GroundTruth, det_image_ids, det_keypoints, det_scores, eval_image_ids=None,
                     max_dets: int = MAX_DETECTIONS, sigmas=COCO_SIGMAS, thresholds=OKS_THRESHOLDS) -> float | None:
    """COCOeval('keypoints') AP over area "all" at maxDets, vectorised; None when no person counts.

    eval_image_ids: the images evaluated (COCOeval's params.imgIds), default those of `gt`."""
    return average_precisions(gt, det_image_ids, det_keypoints, det_scores, eval_image_ids, False, max_dets,
                              sigmas, thresholds)[0]


def average_precisions(gt: GroundTruth, det_image_ids, det_keypoints, det_scores, eval_image_ids=None,
                       per_keypoint: bool = False, max_dets: int = MAX_DETECTIONS, sigmas=COCO_SIGMAS,
                       thresholds=OKS_THRESHOLDS) -> list[float | None]:
    """[AP] as coco_keypoint_ap, or with per_keypoint one AP per keypoint type k: COCOeval on ground
    truth that keeps only keypoint k (people without it are ignored), predictions unchanged. The
    per-keypoint OKS of every pair is computed once and all K matchings run together."""
    det_image_ids = np.asarray(det_image_ids, dtype=np.int64)
    det_keypoints = np.asarray(det_keypoints, dtype=np.float64)
    det_scores = np.asarray(det_scores, dtype=np.float64)
    eval_image_ids = np.unique(gt.image_ids if eval_image_ids is None else np.asarray(eval_image_ids, np.int64))
    places = layout(eval_image_ids, gt, det_image_ids, det_scores, max_dets)
    if per_keypoint:
        ignore_variants = gt.crowd[None] | ~(gt.keypoints[:, :, 2] > 0).T  # (K, G)
    else:
        ignore_variants = gt.ignore[None]
    variants, t_count = len(ignore_variants), len(thresholds)
    gt_counted = (~ignore_variants[:, places.gt_slot[places.gt_slot >= 0]]).sum(axis=1)
    det_width = places.det_slot.shape[1]
    matched_all = np.zeros((t_count, variants, len(places.image_ids), det_width), dtype=bool)
    ignored_all = np.zeros_like(matched_all)
    for chosen, det_slot, gt_slot in _blocks(places, variants * max(t_count, gt.keypoints.shape[1])):
        if det_slot.shape[1] == 0 or gt_slot.shape[1] == 0:
            continue  # nothing to match: every prediction there is a false positive
        pairs = pairs_of(det_slot, gt_slot)
        oks, ks = pair_oks(det_keypoints, gt, pairs, sigmas)
        if per_keypoint:  # keypoint k alone where labelled, else the doubled-bbox OKS (ignored people)
            visible = gt.keypoints[pairs.gt, :, 2] > 0
            oks = np.where(visible, ks, box_oks(det_keypoints, gt, pairs, sigmas)[:, None]).T  # (K, P)
        else:
            oks = oks[None]
        (c, d, g) = pairs.shape
        table = np.full((variants, c, d, g), np.nan)
        table[:, pairs.c, pairs.d, pairs.g] = oks
        padding = gt_slot < 0
        ignore = np.where(padding[None], False, ignore_variants[:, np.maximum(gt_slot, 0)])  # (B, C, G)
        crowd = np.where(padding, False, gt.crowd[np.maximum(gt_slot, 0)])
        matched, ignored = greedy_match(table.reshape(variants * c, d, g), np.tile(det_slot >= 0, (variants, 1)),
                                        ignore.reshape(variants * c, g), np.tile(crowd, (variants, 1)), thresholds)
        matched_all[:, :, chosen, :d] = matched.reshape(t_count, variants, c, d) >= 0
        ignored_all[:, :, chosen, :d] = ignored.reshape(t_count, variants, c, d)
    present = places.det_slot >= 0
    # COCOeval's accumulate: dets of all images (image order, then score order), sorted by score
    order = np.argsort(-det_scores[places.det_slot[present]], kind="mergesort")
    aps: list[float | None] = []
    for b in range(variants):
        if gt_counted[b] == 0:
            aps.append(None)
            continue
        matched = matched_all[:, b][:, present][:, order]  # (T, N)
        ignored = ignored_all[:, b][:, present][:, order]
        aps.append(_average_precision(matched, ignored, int(gt_counted[b])))
    return aps


def _average_precision(matched: np.ndarray, ignored: np.ndarray, gt_counted: int) -> float:
    """COCOeval's interpolated precision at 101 recall points, averaged over thresholds (rows)."""
    if not matched.shape[1]:
        return 0.0
    tp = np.cumsum(matched & ~ignored, axis=1).astype(np.float64)
    fp = np.cumsum(~matched & ~ignored, axis=1).astype(np.float64)
    precision = np.zeros((len(matched), len(RECALL_THRESHOLDS)))
    for t in range(len(matched)):
        recall = tp[t] / gt_counted
        prec = tp[t] / (fp[t] + tp[t] + _EPS)
        prec = np.maximum.accumulate(prec[::-1])[::-1]
        at = np.searchsorted(recall, RECALL_THRESHOLDS, side="left")
        within = at < len(prec)
        precision[t, within] = prec[at[within]]
    return float(precision.mean())
