"""Can the heatmap peak be trusted as a confidence, and how sure are the report's numbers: calibration
(reliability diagram, expected calibration error, AUROC of correct against wrong) and bootstrap
confidence intervals over samples."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

DEFAULT_BINS = 10
BOOTSTRAP_RESAMPLES = 1000


@dataclass
class Reliability:
    """Confidence in equal-width bins over [0, 1] against the fraction of keypoints that are correct."""

    edges: np.ndarray  # (B + 1,)
    confidence: np.ndarray  # (B,) mean confidence of the keypoints in the bin (NaN: empty)
    accuracy: np.ndarray  # (B,) fraction correct in the bin (NaN: empty)
    count: np.ndarray  # (B,) keypoints in the bin

    @property
    def ece(self) -> float:
        """Expected calibration error: sum over bins of (share of keypoints) x |accuracy - confidence|."""
        total = self.count.sum()
        if not total:
            return float("nan")
        filled = self.count > 0
        gaps = np.abs(self.accuracy[filled] - self.confidence[filled])
        return float((self.count[filled] / total * gaps).sum())


def reliability(confidence, correct, bins: int = DEFAULT_BINS) -> Reliability:
    """Bin keypoints by confidence (clipped to [0, 1]: a heatmap peak may leave it) and measure each
    bin's accuracy. confidence, correct: (M,) for the keypoints that count."""
    confidence = np.clip(np.asarray(confidence, np.float64).ravel(), 0.0, 1.0)
    correct = np.asarray(correct, bool).ravel()
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, confidence, bins) / count
        accuracy = np.bincount(which, correct.astype(np.float64), bins) / count
    return Reliability(edges, mean_conf, accuracy, count)


def auroc(confidence, correct) -> float:
    """Area under the ROC curve of confidence separating correct from wrong keypoints (scikit-learn);
    0.5 = no better than chance, NaN when only one outcome occurs."""
    from sklearn.metrics import roc_auc_score

    correct = np.asarray(correct, bool).ravel()
    if correct.all() or not correct.any():
        return float("nan")
    return float(roc_auc_score(correct, np.asarray(confidence, np.float64).ravel()))


@dataclass
class Calibration:
    overall: Reliability
    ece: float
    auroc: float
    per_joint_ece: np.ndarray  # (K,) NaN where no keypoint counts
    per_joint_auroc: np.ndarray  # (K,)
    counted: np.ndarray  # (K,) keypoints per joint
    accuracy: float  # fraction correct overall
    mean_confidence: float


def calibrate(confidence, correct, counted, bins: int = DEFAULT_BINS) -> Calibration:
    """Calibration of confidences (N, K) against correctness (N, K) over the keypoints that count (N, K)."""
    confidence = np.asarray(confidence, np.float64)
    correct, counted = np.asarray(correct, bool), np.asarray(counted, bool)
    overall = reliability(confidence[counted], correct[counted], bins)
    k = confidence.shape[1]
    ece, area = np.full(k, np.nan), np.full(k, np.nan)
    for j in range(k):
        rows = counted[:, j]
        if rows.any():
            ece[j] = reliability(confidence[rows, j], correct[rows, j], bins).ece
            area[j] = auroc(confidence[rows, j], correct[rows, j])
    return Calibration(overall, overall.ece, auroc(confidence[counted], correct[counted]), ece, area,
                       counted.sum(axis=0), float(correct[counted].mean()) if counted.any() else float("nan"),
                       float(np.clip(confidence[counted], 0, 1).mean()) if counted.any() else float("nan"))


# --- bootstrap intervals over samples ------------------------------------------------------------------


@dataclass
class Interval:
    value: np.ndarray  # (...) the statistic on all samples
    low: np.ndarray  # (...) 2.5th percentile of the bootstrap resamples
    high: np.ndarray  # (...) 97.5th percentile
    samples: int
    resamples: int

    def overlaps(self, a, b) -> bool:
        """Whether the intervals of entries a and b overlap."""
        return bool(self.low[a] <= self.high[b] and self.low[b] <= self.high[a])


def _percentile_interval(values, resampled, samples: int, resamples: int, level: float) -> Interval:
    tail = 50 * (1 - level)
    with warnings.catch_warnings():  # a joint never labelled has all-NaN resamples: NaN bounds, no warning
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanpercentile(resampled, [tail, 100 - tail], axis=0)
    return Interval(np.asarray(values, np.float64), low, high, samples, resamples)


def pck_intervals(correct, counted, resamples: int = BOOTSTRAP_RESAMPLES, level: float = 0.95, seed: int = 0
                  ) -> tuple[Interval, Interval]:
    """Percentile bootstrap over samples (people, not keypoints, so that one person's joints move
    together) of per-joint PCK (K,) and pooled PCK (). correct, counted: (N, K) booleans."""
    correct = np.asarray(correct, bool) & np.asarray(counted, bool)
    counted = np.asarray(counted, bool)
    n = len(counted)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(resamples, n))
    hits = correct[draws].sum(axis=1).astype(np.float64)  # (R, K)
    totals = counted[draws].sum(axis=1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_joint = np.where(totals > 0, hits / totals, np.nan)
        pooled = hits.sum(axis=1) / totals.sum(axis=1)
        joint_value = np.where(counted.sum(0) > 0, correct.sum(0) / np.maximum(counted.sum(0), 1), np.nan)
        pooled_value = correct.sum() / counted.sum() if counted.any() else np.nan
    return (_percentile_interval(joint_value, per_joint, n, resamples, level),
            _percentile_interval(pooled_value, pooled, n, resamples, level))


def pooled_pck_intervals(correct, counted, resamples: int = BOOTSTRAP_RESAMPLES, level: float = 0.95,
                         seed: int = 0) -> tuple[Interval, Interval]:
    """Pooled PCK of M conditions on the same samples (correct (M, N, K), counted (N, K)), and the change
    of each against condition 0, with a paired bootstrap: every resample draws the same people for all
    conditions, so the interval of a change is not inflated by the spread between people."""
    counted = np.asarray(counted, bool)
    correct = np.asarray(correct, bool) & counted
    n = len(counted)
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    per_sample_total = counted.sum(axis=1).astype(np.float64)  # (N,)
    per_sample_hits = correct.sum(axis=2).astype(np.float64)  # (M, N)
    totals = per_sample_total[draws].sum(axis=1)  # (R,)
    with np.errstate(invalid="ignore", divide="ignore"):
        resampled = per_sample_hits[:, draws].sum(axis=2).T / totals[:, None]  # (R, M)
        values = per_sample_hits.sum(axis=1) / per_sample_total.sum()
    return (_percentile_interval(values, resampled, n, resamples, level),
            _percentile_interval(values - values[0], resampled - resampled[:, :1], n, resamples, level))


def paired_difference_intervals(correct_a, correct_b, counted, resamples: int = BOOTSTRAP_RESAMPLES,
                                level: float = 0.95, seed: int = 0) -> tuple[Interval, Interval]:
    """Per-joint (K,) and pooled () PCK difference b - a of two models on the same samples (correct_a,
    correct_b, counted: (N, K)), with a paired bootstrap over people."""
    counted = np.asarray(counted, bool)
    a = np.asarray(correct_a, bool) & counted
    b = np.asarray(correct_b, bool) & counted
    n = len(counted)
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    totals = counted[draws].sum(axis=1).astype(np.float64)  # (R, K)
    diff = (b[draws].sum(axis=1) - a[draws].sum(axis=1)).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_joint = np.where(totals > 0, diff / totals, np.nan)
        pooled = diff.sum(axis=1) / totals.sum(axis=1)
        count = counted.sum(axis=0)
        joint_value = np.where(count > 0, (b.sum(0) - a.sum(0)) / np.maximum(count, 1), np.nan)
        pooled_value = (b.sum() - a.sum()) / counted.sum() if counted.any() else np.nan
    return (_percentile_interval(joint_value, per_joint, n, resamples, level),
            _percentile_interval(pooled_value, pooled, n, resamples, level))


def per_joint_ece_intervals(confidence, correct, counted, resamples: int = 200, bins: int = DEFAULT_BINS,
                            seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """95% percentile bootstrap intervals over people of each joint's ECE: (low (K,), high (K,)).
    ECE is biased upwards on few keypoints (every bin's gap counts in full), so read the interval's width."""
    confidence = np.asarray(confidence, np.float64)
    correct, counted = np.asarray(correct, bool), np.asarray(counted, bool)
    n, k = counted.shape
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    values = np.full((resamples, k), np.nan)
    for r, rows in enumerate(draws):
        for j in range(k):
            kept = rows[counted[rows, j]]
            if len(kept):
                values[r, j] = reliability(confidence[kept, j], correct[kept, j], bins).ece
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanpercentile(values, [2.5, 97.5], axis=0)
    return low, high
