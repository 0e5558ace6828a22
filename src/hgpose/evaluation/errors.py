"""Keypoint error diagnosis in the manner of Ronchi and Perona ("Benchmarking and error diagnosis in
multi-instance pose estimation", ICCV 2017), and per-keypoint AP.

Each prediction (top 20 per image by score, as COCOeval) is matched greedily in score order to the
free, non-ignored ground-truth person of its image with the highest *inversion-tolerant* OKS (each
keypoint may take its left/right twin, so that an inverted person is still found), at OKS >= 0.1.
Every keypoint of a matched prediction whose ground truth is labelled is then classified by its
keypoint similarity ks (COCO's per-keypoint term of OKS):

    good       ks >= 0.85 with the matched person's same keypoint
    jitter     0.5 <= ks < 0.85
    inversion  ks < 0.5, but ks >= 0.5 with the same person's left/right twin keypoint
    swap       ks < 0.5 and not an inversion, but ks >= 0.5 with another person's same keypoint
    miss       none of these

(in that order of precedence). "AP if fixed" moves every keypoint of one error type to its matched
ground-truth position and recomputes COCO keypoint AP (hgpose.evaluation.oks.coco_keypoint_ap). Everything is
numpy over all images at once; the only Python loop is over score ranks (at most 20).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hgpose.evaluation.oks import (
    COCO_SIGMAS,
    MAX_DETECTIONS,
    GroundTruth,
    _blocks,
    average_precisions,
    coco_keypoint_ap,
    greedy_match,
    keypoint_similarity,
    layout,
    pair_oks,
    pairs_of,
)
from hgpose.keypoints import KEYPOINT_NAMES, flip_permutation

ERROR_TYPES = ("good", "jitter", "inversion", "swap", "miss")
FIXABLE = ("jitter", "inversion", "swap", "miss")
GOOD_KS, JITTER_KS = 0.85, 0.5
MATCH_OKS = 0.1


@dataclass
class ErrorAnalysis:
    counts: np.ndarray  # (K, 5) keypoints per joint and ERROR_TYPES
    ap: float | None  # AP of the predictions as they are
    ap_fixed: dict  # error type -> AP with that type's keypoints moved to the truth (and "all")
    matched_predictions: int
    unmatched_predictions: int  # among the top 20 per image: background or duplicates
    unmatched_people: int  # non-ignored people no prediction was matched to
    fixed_keypoints: dict | None = None  # error type -> (D, K, 3) keypoints, for tests and figures

    def to_dict(self, names=KEYPOINT_NAMES) -> dict:
        totals = self.counts.sum(axis=0)
        total = int(totals.sum())
        return {
            "definition": "Ronchi & Perona: per labelled keypoint of a matched prediction, ks >= 0.85 good, "
                          ">= 0.5 jitter, else ks >= 0.5 with the same person's left/right twin inversion, "
                          "with another person's same keypoint swap, else miss",
            "overall": {t: int(n) for t, n in zip(ERROR_TYPES, totals)},
            "overall_fraction": {t: (float(n) / total if total else None) for t, n in zip(ERROR_TYPES, totals)},
            "per_joint": {name: {t: int(n) for t, n in zip(ERROR_TYPES, row)} for name, row in zip(names, self.counts)},
            "ap": self.ap,
            "ap_if_fixed": dict(self.ap_fixed),
            "matched_predictions": self.matched_predictions,
            "unmatched_predictions": self.unmatched_predictions,
            "unmatched_people": self.unmatched_people,
        }


def analyze_errors(gt: GroundTruth, det_image_ids, det_keypoints, det_scores, eval_image_ids=None,
                   max_dets: int = MAX_DETECTIONS, sigmas=COCO_SIGMAS, keep_fixed: bool = False) -> ErrorAnalysis:
    """Classify every labelled keypoint of every matched prediction and compute the AP if fixed.

    det_keypoints (D, K, 3) image pixels; eval_image_ids as in coco_keypoint_ap."""
    det_image_ids = np.asarray(det_image_ids, dtype=np.int64)
    det_keypoints = np.asarray(det_keypoints, dtype=np.float64)
    det_scores = np.asarray(det_scores, dtype=np.float64)
    eval_image_ids = np.unique(gt.image_ids if eval_image_ids is None else np.asarray(eval_image_ids, np.int64))
    k = det_keypoints.shape[1]
    perm = np.asarray(flip_permutation(k))
    places = layout(eval_image_ids, gt, det_image_ids, det_scores, max_dets)
    labels = np.full((len(det_scores), k), -1, dtype=np.int8)  # index into ERROR_TYPES, -1 not classified
    target = np.full((len(det_scores), k, 2), np.nan)  # the matched person's keypoint
    matched_people = np.zeros(len(gt.image_ids), dtype=bool)
    matched_count = 0
    for _, det_slot, gt_slot in _blocks(places, k * 4):
        if det_slot.shape[1] == 0 or gt_slot.shape[1] == 0:
            continue
        pairs = pairs_of(det_slot, gt_slot)
        _, pair_ks = pair_oks(det_keypoints, gt, pairs, sigmas)  # (P, K)
        pair_visible = gt.keypoints[pairs.gt, :, 2] > 0
        # tolerant matching: each keypoint may take its twin's prediction (an inverted person is found)
        twin_ks = keypoint_similarity(det_keypoints[pairs.det][:, perm], gt.keypoints[pairs.gt, :, :2],
                                      gt.areas[pairs.gt], sigmas)
        labelled = pair_visible.sum(-1)
        tolerant = (np.maximum(pair_ks, twin_ks) * pair_visible).sum(-1) / np.maximum(labelled, 1)
        tolerant = pairs.scatter(np.where(labelled > 0, tolerant, np.nan))  # (C, D, G), NaN: not matchable
        ks = pairs.scatter(pair_ks)  # (C, D, G, K)
        g = np.maximum(gt_slot, 0)
        gp = gt.keypoints[g]  # (C, G, K, 3)
        visible = (gp[..., 2] > 0) & (gt_slot >= 0)[..., None]
        dp = det_keypoints[np.maximum(det_slot, 0)][..., :2]  # (C, D, K, 2)
        ignore = np.where(gt_slot < 0, False, gt.ignore[g])
        match, match_ignored = greedy_match(tolerant, det_slot >= 0, ignore, np.zeros_like(ignore), [MATCH_OKS])
        match, use = match[0], (match[0] >= 0) & ~match_ignored[0]  # (C, D)
        m = np.maximum(match, 0)
        rows = np.arange(len(det_slot))[:, None]
        own_ks = np.take_along_axis(ks, m[:, :, None, None], axis=2)[:, :, 0]  # (C, D, K)
        own_visible = visible[rows, m]  # (C, D, K)
        own_points = gp[rows, m][..., :2]  # (C, D, K, 2)
        # inversion: prediction of j against the matched person's twin of j (same sigma within a pair)
        inverted_ks = keypoint_similarity(dp, own_points[:, :, perm], gt.areas[g][rows, m], sigmas)
        inverted_ok = (inverted_ks >= JITTER_KS) & own_visible[:, :, perm]
        # swap: against every other person's same keypoint
        others = visible[:, None] & (np.arange(gt_slot.shape[1])[None, None, :, None] != match[:, :, None, None])
        swap_ok = (np.where(others, ks, 0.0).max(axis=2) >= JITTER_KS)
        kind = np.select(
            [own_ks >= GOOD_KS, own_ks >= JITTER_KS, inverted_ok, swap_ok],
            [0, 1, 2, 3], default=4,
        ).astype(np.int8)
        classified = use[:, :, None] & own_visible
        det_index = det_slot[use]
        labels[det_index] = np.where(classified[use], kind[use], -1)
        target[det_index] = own_points[use]
        matched_people[g[use.nonzero()[0], m[use]]] = True
        matched_count += int(use.sum())

    counts = np.zeros((k, len(ERROR_TYPES)), dtype=np.int64)
    det_index, joint = np.nonzero(labels >= 0)
    np.add.at(counts, (joint, labels[det_index, joint]), 1)

    evaluated = np.isin(gt.image_ids, eval_image_ids)
    counted_people = evaluated & ~gt.ignore
    in_top = np.zeros(len(det_scores), bool)
    in_top[places.det_slot[places.det_slot >= 0]] = True
    ap = coco_keypoint_ap(gt, det_image_ids, det_keypoints, det_scores, eval_image_ids, max_dets, sigmas)
    ap_fixed, fixed_keypoints = {}, {}
    for name in (*FIXABLE, "all"):
        move = labels >= 1 if name == "all" else labels == ERROR_TYPES.index(name)
        fixed = det_keypoints.copy()
        fixed[..., :2][move] = target[move]
        ap_fixed[name] = coco_keypoint_ap(gt, det_image_ids, fixed, det_scores, eval_image_ids, max_dets, sigmas)
        if keep_fixed:
            fixed_keypoints[name] = fixed
    return ErrorAnalysis(
        counts=counts, ap=ap, ap_fixed=ap_fixed, matched_predictions=matched_count,
        unmatched_predictions=int(in_top.sum()) - matched_count,
        unmatched_people=int((counted_people & ~matched_people).sum()),
        fixed_keypoints=fixed_keypoints if keep_fixed else None,
    )


def per_keypoint_ap(gt: GroundTruth, det_image_ids, det_keypoints, det_scores, eval_image_ids=None,
                    names=KEYPOINT_NAMES, **kwargs) -> dict[str, float | None]:
    """COCO keypoint AP with OKS restricted to one keypoint type: the ground truth keeps only that
    keypoint (people without it are ignored), the predictions are unchanged."""
    aps = average_precisions(gt, det_image_ids, det_keypoints, det_scores, eval_image_ids, per_keypoint=True,
                             **kwargs)
    return dict(zip(names, aps))


# --- the figure -----------------------------------------------------------------------------------------

ERROR_COLOURS = {"good": "#4caf50", "jitter": "#ffc107", "inversion": "#e91e63", "swap": "#9c27b0", "miss": "#607d8b"}


def error_figure(errors: dict, title: str = "Keypoint errors (Ronchi & Perona)"):
    """Stacked bars per joint of the error fractions from ErrorAnalysis.to_dict(), plus the AP if
    each error type were fixed. A matplotlib Figure (no pyplot)."""
    from matplotlib.figure import Figure

    names = list(errors["per_joint"])
    counts = np.array([[errors["per_joint"][n][t] for t in ERROR_TYPES] for n in names], dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    fractions = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    bars, aps = fig.subplots(1, 2, width_ratios=(4, 1))
    bottom = np.zeros(len(names))
    for j, kind in enumerate(ERROR_TYPES):
        bars.bar(names, fractions[:, j], bottom=bottom, color=ERROR_COLOURS[kind], label=kind)
        bottom += fractions[:, j]
    bars.set_ylim(0, 1)
    bars.set_ylabel("share of labelled keypoints")
    bars.tick_params(axis="x", labelrotation=60)
    bars.legend(ncols=5, fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    bars.set_title(title, fontsize=10, pad=22)
    labels = ["as is", *(f"fix {t}" for t in FIXABLE), "fix all"]
    values = [errors["ap"], *(errors["ap_if_fixed"][t] for t in FIXABLE), errors["ap_if_fixed"]["all"]]
    aps.barh(labels[::-1], [v or 0.0 for v in values[::-1]], color="#607d8b")
    for y, v in enumerate(values[::-1]):
        aps.text((v or 0.0) + 0.01, y, "-" if v is None else f"{v:.3f}", va="center", fontsize=8)
    aps.set_xlim(0, 1.15)
    aps.set_title("COCO AP if fixed", fontsize=10)
    return fig
