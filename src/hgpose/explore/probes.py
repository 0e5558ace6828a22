"""Where joint information lives: linear probes on each stage's pooled activations, and linear CKA
between stages (Kornblith et al. 2019).

A probe is a cross-validated linear read-out (scikit-learn ridge regression, the
regularisation chosen inside each training fold by
efficient leave-one-out) of a joint's position, or of whether it is labelled
visible, from one stage's activations, average-pooled to a small grid so that every stage gives a
vector of comparable size while keeping coarse spatial layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from hgpose.explore.analyses import (
    DEFAULT_BATCH,
    _batches,
    _device,
    _evaluating,
    _hooks,
    _images,
    _levels,
    stage_names,
)
from hgpose.model import HourglassNet, to_model_input

POOL_GRID = 4  # stages are pooled to at most 4x4 cells before probing
RIDGE_ALPHAS = np.logspace(-2, 6, 17)


def probe_stage_names(depth: int) -> list[str]:
    """stage_names plus the head's features (the input of the final 1x1 convolution)."""
    return [*stage_names(depth), "head"]


@torch.no_grad()
def pooled_stages(model: HourglassNet, images, grid: int = POOL_GRID, stack: int = -1,
                  batch_size: int = DEFAULT_BATCH) -> dict[str, np.ndarray]:
    """Every stage's activations average-pooled to min(grid, side) cells: {stage: (N, C * cells) float32},
    in probe_stage_names order. Pooling on the fly keeps memory at N x C x 16 floats per stage."""
    images, device = _images(images), _device(model)
    levels = _levels(model, stack)
    names = probe_stage_names(len(levels))
    captured: dict[str, list[torch.Tensor]] = {name: [] for name in names}

    def keep(name, first_output: bool = False):
        def hook(module, args, output):
            output = output[0] if first_output else output
            cells = min(grid, output.shape[-1])
            pooled = F.adaptive_avg_pool2d(output.detach().float(), cells)
            captured[name].append(pooled.flatten(1).cpu())
        return hook

    watched = [(model.stem_res3, keep("stem")), (levels[-1].inner, keep("bottleneck")),
               (model.heads[stack], keep("head", first_output=True))]
    for i, level in enumerate(levels, start=1):
        watched += [(level.low1, keep(f"down{i}")), (level, keep(f"up{i}"))]
    with _evaluating(model), _hooks(watched):
        for _, batch in _batches(images, batch_size):
            model(to_model_input(batch.to(device)))
    return {name: torch.cat(captured[name]).numpy() for name in names}


@dataclass
class Probes:
    """Cross-validated linear probes, stages x joints."""

    stages: list[str]
    position_r2: np.ndarray  # (S, K) out-of-fold R^2 of the joint's (x, y), pooled over both; NaN: too few
    position_error: np.ndarray  # (S, K) out-of-fold mean distance, heatmap pixels
    visible_auroc: np.ndarray  # (S, K) out-of-fold AUROC of reading "labelled visible (v = 2)"; 0.5 chance
    labelled: np.ndarray  # (K,) samples with the joint labelled (the position probes' sample count)
    samples: int
    folds: int


# No per-feature standardisation: a stage's channels share one scale, and standardising near-constant
# channels on a few dozen samples blows up their noise in the held-out fold.
def _ridge():
    from sklearn.linear_model import RidgeCV

    return RidgeCV(alphas=RIDGE_ALPHAS)


def probe_position(features, targets, folds: int = 5, seed: int = 0) -> tuple[float, float]:
    """Out-of-fold (R^2, mean distance) of a ridge read-out of targets (n, 2) from features (n, D).
    R^2 = 1 - SSE / SST pooled over the two coordinates: 0 = no better than the mean position."""
    from sklearn.model_selection import KFold, cross_val_predict

    features, targets = np.asarray(features, np.float64), np.asarray(targets, np.float64)
    if len(targets) < 2 * folds:
        return float("nan"), float("nan")
    predicted = cross_val_predict(_ridge(), features, targets,
                                  cv=KFold(folds, shuffle=True, random_state=seed))
    sse = ((predicted - targets) ** 2).sum()
    sst = ((targets - targets.mean(axis=0)) ** 2).sum()
    r2 = 1 - sse / sst if sst > 0 else float("nan")
    return float(r2), float(np.linalg.norm(predicted - targets, axis=1).mean())


def probe_labels(features, labels, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Out-of-fold AUROC of a ridge read-out of each column of binary labels (n, M) from features (n, D),
    all columns in one multi-output fit per fold (each column its own regularisation); 0.5 is chance.
    NaN for a column whose rarer class has fewer than 2 samples."""
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import KFold, cross_val_predict

    labels = np.asarray(labels).astype(np.float64)
    result = np.full(labels.shape[1], np.nan)
    if len(labels) < 2 * folds:
        return result
    scores = cross_val_predict(RidgeCV(alphas=RIDGE_ALPHAS, alpha_per_target=True), np.asarray(features, np.float64),
                               2 * labels - 1, cv=KFold(folds, shuffle=True, random_state=seed))
    scores = scores.reshape(len(labels), -1)  # one column comes back flat
    for m in range(labels.shape[1]):
        if min(labels[:, m].sum(), (1 - labels[:, m]).sum()) >= 2:
            result[m] = roc_auc_score(labels[:, m], scores[:, m])
    return result


def linear_probes(features: dict[str, np.ndarray], keypoints, visibility, folds: int = 5, seed: int = 0
                  ) -> Probes:
    """Probe every stage (features: {stage: (N, D)}, e.g. pooled_stages) for every joint's position
    (keypoints (N, K, 2), over the samples where the joint is labelled, v = 1 or 2) and for whether it is
    labelled visible (v = 2 against the rest, over all N)."""
    keypoints, visibility = np.asarray(keypoints, np.float64), np.asarray(visibility)
    n, k = visibility.shape
    labelled = (visibility == 1) | (visibility == 2)
    stages = list(features)
    r2, error, auroc = (np.full((len(stages), k), np.nan) for _ in range(3))
    for s, name in enumerate(stages):
        x = np.asarray(features[name])
        for j in range(k):
            rows = labelled[:, j]
            r2[s, j], error[s, j] = probe_position(x[rows], keypoints[rows, j], folds, seed)
        auroc[s] = probe_labels(x, visibility == 2, folds, seed)
    return Probes(stages, r2, error, auroc, labelled.sum(axis=0), n, folds)


def linear_cka(x, y) -> float:
    """Linear centred kernel alignment of two representations of the same n samples, x (n, D1) and
    y (n, D2): ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) after centring each feature. 1 for
    representations equal up to rotation and isotropic scale; invariant to orthogonal transforms."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    # the n x n Gram form is cheaper than D x D when features outnumber samples
    gx, gy = x @ x.T, y @ y.T
    denominator = np.sqrt((gx * gx).sum() * (gy * gy).sum())
    return float((gx * gy).sum() / denominator) if denominator > 0 else float("nan")


def cka_matrix(features: dict[str, np.ndarray], others: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """(S, S') linear CKA between every stage of `features` and every stage of `others` (default: itself)."""
    others = features if others is None else others
    return np.array([[linear_cka(a, b) for b in others.values()] for a in features.values()])
