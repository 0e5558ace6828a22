"""Stacked hourglasses: what each stack fixes. Every stack's heatmaps are decoded and scored as the network's
last output is (the seed's PCK), with paired bootstrap intervals between stacks, and each counted keypoint of
each stack is put in one error class, so that a later stack's gain reads as the errors it removed.

Error classes of a counted keypoint, distances d in units of the seed's c (heatmap side / 10):
- good: d < 0.5, correct under the seed's PCK;
- inversion: not good, and within 0.5 of its left/right twin's true position (closer to it than to its own);
- jitter: not good, not an inversion, d < JITTER_LIMIT: near its joint but outside the PCK radius;
- miss: everything else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hgpose.evaluation.pck import counted_mask, normalized_distances, pck, seed_normalizer
from hgpose.explore.analyses import as_crops, decode, evaluating, in_batches
from hgpose.explore.calibration import pooled_pck_intervals
from hgpose.explore.probes import PixelProbes, model_pixel_probes
from hgpose.keypoints import twin_of
from hgpose.model.hourglass import to_model_input

ERROR_CLASSES = ("good", "jitter", "inversion", "miss")
JITTER_LIMIT = 1.5  # in units of c: 3 times the PCK radius


@torch.no_grad()
def stack_heatmaps(model, images, batch_size: int = 16) -> np.ndarray:
    """(T, N, K, h, h) float32: every stack's heatmaps on crops (N, 3, S, S), first stack first."""
    images, device, parts = as_crops(images), next(model.parameters()).device, []
    with evaluating(model):
        for _, batch in in_batches(images, batch_size):
            parts.append(model(to_model_input(batch.to(device)), all_stacks=True).float().cpu())
    return torch.cat(parts).transpose(0, 1).numpy()


def error_classes(coords, keypoints, visibility, normalizer: float) -> np.ndarray:
    """(N, K) index into ERROR_CLASSES of each keypoint (-1 where it is not counted)."""
    coords, keypoints = np.asarray(coords, np.float64), np.asarray(keypoints, np.float64)
    counted = counted_mask(visibility)
    distance = np.linalg.norm(coords - keypoints, axis=-1) / normalizer
    out = np.where(distance < 0.5, 0, np.where(distance < JITTER_LIMIT, 1, 3))
    for j in range(keypoints.shape[1]):
        t = twin_of(j)
        if t is None:
            continue
        to_twin = np.linalg.norm(coords[:, j] - keypoints[:, t], axis=-1) / normalizer
        inverted = counted[:, t] & (distance[:, j] >= 0.5) & (to_twin < 0.5) & (to_twin < distance[:, j])
        out[inverted, j] = 2
    return np.where(counted, out, -1)


@dataclass
class StackStudy:
    """Per stack (T stacks, first first): PCK with intervals, its change against the first stack, errors."""

    pck: np.ndarray  # (T,) pooled PCK over the samples
    low: np.ndarray  # (T,) 95% bootstrap interval over people
    high: np.ndarray
    change_low: np.ndarray  # (T,) paired interval of pck[t] - pck[t - 1] (NaN for the first stack)
    change_high: np.ndarray
    per_joint: np.ndarray  # (T, K)
    errors: np.ndarray  # (T, 4) share of the counted keypoints in each of ERROR_CLASSES
    error_counts: np.ndarray  # (T, 4)
    coords: np.ndarray  # (T, N, K, 2) decoded keypoints, heatmap coordinates
    confidence: np.ndarray  # (T, N, K)
    samples: int
    error_change_low: np.ndarray  # (4,) paired 95% interval of each class's share, last stack minus first
    error_change_high: np.ndarray


def class_share_change(classes, resamples: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Paired 95% bootstrap interval over people of each error class's share, last stack minus first:
    classes (T, N, K) as error_classes gives them (-1: not counted)."""
    first, last = classes[0], classes[-1]
    counted = (first >= 0).sum(1).astype(np.float64)  # (N,)
    n = len(counted)
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    low, high = np.zeros(len(ERROR_CLASSES)), np.zeros(len(ERROR_CLASSES))
    for i in range(len(ERROR_CLASSES)):
        diff = ((last == i).sum(1) - (first == i).sum(1)).astype(np.float64)  # (N,)
        with np.errstate(invalid="ignore", divide="ignore"):
            values = diff[draws].sum(1) / counted[draws].sum(1)
        low[i], high[i] = np.nanpercentile(values, [2.5, 97.5]) if n else (np.nan, np.nan)
    return low, high


def stack_study(model, images, keypoints, visibility, batch_size: int = 16, seed: int = 0) -> StackStudy:
    """PCK, paired intervals and error classes of every stack's output on crops (N, 3, S, S)."""
    maps = stack_heatmaps(model, images, batch_size)
    decoded = [decode(stack) for stack in maps]
    coords = np.stack([c for c, _ in decoded])
    confidence = np.stack([c for _, c in decoded])
    normalizer = seed_normalizer(model.config.heatmap_size)
    counted = counted_mask(visibility)
    results = [pck(c, keypoints, visibility, normalizer) for c in coords]
    correct = np.stack([normalized_distances(c, keypoints, normalizer) < 0.5 for c in coords])
    values, _ = pooled_pck_intervals(correct, counted, seed=seed)
    change_low, change_high = np.full(len(coords), np.nan), np.full(len(coords), np.nan)
    for t in range(1, len(coords)):  # each stack against the one before it, the same people resampled
        _, changes = pooled_pck_intervals(correct[[t - 1, t]], counted, seed=seed)
        change_low[t], change_high[t] = changes.low[1], changes.high[1]
    classes = np.stack([error_classes(c, keypoints, visibility, normalizer) for c in coords])
    counts = np.stack([[(k == i).sum() for i in range(len(ERROR_CLASSES))] for k in classes]).astype(np.float64)
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    error_low, error_high = class_share_change(classes, seed=seed)
    return StackStudy(np.array([r.overall for r in results]), values.low, values.high, change_low, change_high,
                      np.stack([r.per_joint for r in results]), shares, counts, coords, confidence, len(counted),
                      error_low, error_high)


def stacks_pixel_probes(model, images, keypoints, visibility, folds: int = 5, seed: int = 0,
                        batch_size: int = 16) -> PixelProbes:
    """The per-pixel probe over every stack's stages, first stack first, as one PixelProbes whose stage names
    carry their stack ('stack 1 up1'): does a later stack's hourglass hold the joints more readably than the
    same stage of the first? Each stack costs the probe's two forward passes; the same folds for every stack."""
    per_stack = [model_pixel_probes(model, images, keypoints, visibility, folds, seed, batch_size, stack=t)
                 for t in range(model.config.num_stacks)]
    first = per_stack[0]
    return PixelProbes(
        [f"stack {t + 1} {s}" for t, p in enumerate(per_stack) for s in p.stages],
        [side for p in per_stack for side in p.sides],
        *(np.concatenate([getattr(p, name) for p in per_stack]) for name in ("pck", "visible_auroc", "ceiling")),
        first.chance, first.counted, first.samples, first.folds,
        np.concatenate([p.coords for p in per_stack]))
