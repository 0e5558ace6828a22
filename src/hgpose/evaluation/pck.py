"""PCK, the seed's and bearpaw/pytorch-pose's: pure functions of decoded keypoints and ground truth.

The seed's PCK (Section 1.1): a labelled keypoint (v = 1 or 2) is correct when
||pred - gt|| / c < r, with c = heatmap size / 10 (6.4 for 64x64 heatmaps) and r = 0.5, both in
heatmap pixels; gt is the true sub-pixel keypoint. The figure is pooled over every counted keypoint.

`pck_bearpaw` reproduces bearpaw/pytorch-pose's `accuracy()` instead (ground truth = argmax of the
target heatmap, integer argmax predictions, per-joint means averaged, batch figures averaged), so a
number can be compared with work that used that code. docs/protocol.md lists the differences.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hgpose.keypoints import KEYPOINT_NAMES
from hgpose.runtime.files import json_float

PCK_THRESHOLD = 0.5  # r
DEFAULT_CURVE_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 21))  # 0.05 .. 1.0
PCK_STYLES = ("seed", "bearpaw")


def seed_normalizer(heatmap_size: int) -> float:
    """The seed's c, a tenth of the heatmap side (after Olsen), computed as the seed writes it: 64 / 10 = 6.4."""
    return heatmap_size / 10


@dataclass
class PCKResult:
    """PCK of one set of predictions. per_joint is NaN for a joint with nothing counted."""

    overall: float  # correct / counted, pooled over every counted keypoint
    per_joint: np.ndarray  # (K,)
    mean_per_joint: float  # mean of per_joint over joints that have a value
    correct: np.ndarray  # (K,) int64
    counted: np.ndarray  # (K,) int64
    normalizer: float
    threshold: float

    def to_dict(self, names=KEYPOINT_NAMES) -> dict:
        """JSON-ready (NaN -> None), per joint keyed by keypoint name."""
        names = names if len(names) == len(self.per_joint) else [str(i) for i in range(len(self.per_joint))]
        return {
            "overall": json_float(self.overall),
            "mean_per_joint": json_float(self.mean_per_joint),
            "correct": int(self.correct.sum()),
            "counted": int(self.counted.sum()),
            "per_joint": {name: json_float(v) for name, v in zip(names, self.per_joint)},
            "per_joint_counted": {name: int(c) for name, c in zip(names, self.counted)},
            "normalizer": self.normalizer,
            "threshold": self.threshold,
        }


def _numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def normalized_distances(pred, gt, normalizer) -> np.ndarray:
    """(N, K) ||pred - gt|| / normalizer; normalizer is a number or one per sample (N,)."""
    pred, gt = _numpy(pred).astype(np.float64), _numpy(gt).astype(np.float64)
    normalizer = np.asarray(_numpy(normalizer), dtype=np.float64)
    if normalizer.ndim == 1:
        normalizer = normalizer[:, None]
    return np.linalg.norm(pred - gt, axis=-1) / normalizer


def counted_mask(visibility) -> np.ndarray:
    """Keypoints PCK counts: COCO flag 1 (labelled, occluded) or 2 (labelled, visible)."""
    visibility = _numpy(visibility)
    return (visibility == 1) | (visibility == 2)


def pck_from_distances(distances: np.ndarray, counted: np.ndarray, threshold: float = PCK_THRESHOLD,
                       normalizer: float = float("nan")) -> PCKResult:
    correct_mask = counted & (distances < threshold)  # strict; a NaN distance is counted and wrong
    correct = correct_mask.sum(axis=0).astype(np.int64)
    counts = counted.sum(axis=0).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_joint = np.where(counts > 0, correct / np.maximum(counts, 1), np.nan)
    total = counts.sum()
    overall = correct.sum() / total if total else float("nan")
    has_value = ~np.isnan(per_joint)
    mean_per_joint = float(per_joint[has_value].mean()) if has_value.any() else float("nan")
    return PCKResult(float(overall), per_joint, mean_per_joint, correct, counts,
                     float(np.mean(normalizer)) if np.size(normalizer) else float("nan"), float(threshold))


def pck(pred, gt, visibility, normalizer, threshold: float = PCK_THRESHOLD) -> PCKResult:
    """Percentage of correct keypoints, exactly as the seed defines it.

    pred, gt: (N, K, 2) in heatmap pixels (gt: the true sub-pixel keypoint); visibility: (N, K) COCO
    flags, only 1 and 2 are counted (callers pass 0 for keypoints off the heatmap); normalizer: c,
    a number or one per sample. Correct: ||pred - gt|| / c < threshold (strict). numpy or torch input.
    """
    distances = normalized_distances(pred, gt, normalizer)
    return pck_from_distances(distances, counted_mask(visibility), threshold, _numpy(normalizer))


def pck_curve(pred, gt, visibility, normalizer, thresholds=DEFAULT_CURVE_THRESHOLDS) -> list[float]:
    """Overall PCK at each threshold (the distances are computed once)."""
    distances = normalized_distances(pred, gt, normalizer)
    counted = counted_mask(visibility)
    total = counted.sum()
    return [float((counted & (distances < t)).sum() / total) if total else float("nan") for t in thresholds]


def bearpaw_argmax(heatmaps: torch.Tensor) -> torch.Tensor:
    """pytorch-pose's get_preds: 1-based integer argmax (x, y) per map, (0, 0) where the max is <= 0."""
    n, k, h, w = heatmaps.shape
    maxval, index = heatmaps.reshape(n, k, h * w).max(dim=-1)
    coords = torch.stack([index % w, torch.div(index, w, rounding_mode="floor")], dim=-1).float() + 1
    return coords * (maxval > 0).unsqueeze(-1)


def pck_bearpaw(output: torch.Tensor, target: torch.Tensor, joints=None, threshold: float = PCK_THRESHOLD):
    """One batch's accuracy as pytorch-pose's accuracy(output, target, idxs): a tensor laid out as
    theirs, [mean, joint_0, joint_1, ...] on the input's device (no host sync).

    output, target: (N, K, H, W) predicted and target heatmaps; joints: 0-based joints to include
    (theirs are 1-based idxs), default all. A joint entry is -1 when no sample has a valid target for
    it; a target is valid when both 1-based argmax coordinates are > 1 (so an all-zero map, and a
    keypoint in the first row or column, are excluded). Distances are normalised by W / 10. The mean
    is over joints with an entry >= 0, and 0 when there are none (as theirs).
    """
    joints = list(range(output.shape[1])) if joints is None else list(joints)
    preds, gts = bearpaw_argmax(output.float()), bearpaw_argmax(target.float())
    valid = (gts[..., 0] > 1) & (gts[..., 1] > 1)
    distances = torch.linalg.vector_norm(preds - gts, dim=-1) / (output.shape[3] / 10)
    counted = valid.sum(dim=0)
    correct = (valid & (distances < threshold)).sum(dim=0)
    per_joint = torch.where(counted > 0, correct / counted.clamp(min=1), torch.full_like(distances[0], -1.0))
    per_joint = per_joint[joints]
    has = per_joint >= 0
    mean = (per_joint * has).sum() / has.sum().clamp(min=1)  # 0 when no joint has an entry
    return torch.cat([mean.reshape(1), per_joint])


@dataclass
class BearpawPCK:
    """An epoch figure as pytorch-pose reports it: batch accuracies averaged, weighted by batch size."""

    overall: float
    per_joint: np.ndarray  # (K,) the same average of each joint's batch accuracies, skipping -1 entries
    batches: int


def pck_bearpaw_epoch(batch_accuracies, batch_sizes) -> BearpawPCK:
    """Their AverageMeter over batches: sum(acc_b * n_b) / sum(n_b). batch_accuracies: (B, 1 + K)
    rows from pck_bearpaw; batch_sizes: (B,)."""
    acc = _numpy(batch_accuracies).astype(np.float64).reshape(len(batch_sizes), -1)
    sizes = _numpy(batch_sizes).astype(np.float64)
    if not len(sizes):
        return BearpawPCK(float("nan"), np.full(max(acc.shape[1] - 1, 0), np.nan), 0)
    overall = float((acc[:, 0] * sizes).sum() / sizes.sum())
    joint_acc, has = acc[:, 1:], acc[:, 1:] >= 0
    weights = has * sizes[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        per_joint = np.where(weights.sum(0) > 0, (joint_acc * weights).sum(0) / weights.sum(0), np.nan)
    return BearpawPCK(overall, per_joint, len(sizes))


VISIBILITY_GROUPS = {"all": (1, 2), "v2": (2,), "v1": (1,)}


def keep_flags(visibility, flags) -> np.ndarray:
    """Visibility with every flag not in `flags` set to 0 (not counted)."""
    visibility = _numpy(visibility)
    return np.where(np.isin(visibility, flags), visibility, 0)


def pck_groups(inference, normalizer: float, threshold: float = PCK_THRESHOLD) -> dict:
    """PCK over v in {1, 2} ("all", the seed's figure), v = 2 only and v = 1 only, of an
    evaluation.inference.Inference (anything with coords, gt and visibility arrays)."""
    distances = normalized_distances(inference.coords, inference.gt, normalizer)
    return {
        name: pck_from_distances(distances, counted_mask(keep_flags(inference.visibility, flags)), threshold,
                                 normalizer)
        for name, flags in VISIBILITY_GROUPS.items()
    }
