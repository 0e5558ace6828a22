"""Where joint information lives: linear read-outs of the joints from each stage's activations, and linear
CKA between stages (Kornblith et al. 2019).

Two probes, both cross-validated linear read-outs:
- the per-pixel probe (pixel_probes, the report's main one): at every location of a stage's feature map a
  ridge map from its C channels to the 17 joints' target heatmaps resampled to the stage's resolution, the
  form of the network's own head (a 1x1 convolution); held-out maps decoded by their peak and scored with
  the seed's PCK. Folds hold whole samples; the penalty is chosen inside the training folds.
- the pooled probe (linear_probes): scikit-learn ridge regression of a joint's (x, y), or of whether it is
  labelled visible, from the stage's activations average-pooled to at most 4x4 cells (regularisation chosen
  inside each training fold by efficient leave-one-out). It is the one that can find position coded in the
  channels of the 1x1 and 2x2 stages, where a per-pixel read-out has no grid to place a joint on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from hgpose.evaluation.pck import counted_mask, normalized_distances, seed_normalizer
from hgpose.explore.analyses import DEFAULT_BATCH, decode, stage_batches, stage_names
from hgpose.model.heatmaps import render_heatmaps
from hgpose.model.hourglass import HourglassNet

POOL_GRID = 4  # stages are pooled to at most 4x4 cells before probing
RIDGE_ALPHAS = np.logspace(-2, 6, 17)


def one_blas_thread():
    """A context in which numpy's BLAS runs one thread. The probes solve many small systems, where threads
    only add overhead; on a busy 2-core machine, with OpenBLAS threads waiting for a core, they made the
    ridge fits 30 to 100 times slower. Torch's threads are left alone."""
    from threadpoolctl import threadpool_limits  # installed with scikit-learn

    return threadpool_limits(1, user_api="blas")


def probe_stage_names(depth: int) -> list[str]:
    """stage_names plus the head's features (the input of the final 1x1 convolution)."""
    return [*stage_names(depth), "head"]


def pooled_stages(model: HourglassNet, images, grid: int = POOL_GRID, stack: int = -1,
                  batch_size: int = DEFAULT_BATCH) -> dict[str, np.ndarray]:
    """Every stage's activations average-pooled to min(grid, side) cells: {stage: (N, C * cells) float32},
    in probe_stage_names order. Pooling on the fly keeps memory at N x C x 16 floats per stage."""
    captured: dict[str, list[torch.Tensor]] = {}
    for _, stages, _ in stage_batches(model, images, stack, batch_size, head=True):
        for name, maps in stages.items():
            captured.setdefault(name, []).append(F.adaptive_avg_pool2d(maps, min(grid, maps.shape[-1])).flatten(1))
    return {name: torch.cat(parts).numpy() for name, parts in captured.items()}


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
    from sklearn.model_selection import KFold, cross_val_predict

    labels = np.asarray(labels).astype(np.float64)
    if len(labels) < 2 * folds:
        return np.full(labels.shape[1], np.nan)
    scores = cross_val_predict(RidgeCV(alphas=RIDGE_ALPHAS, alpha_per_target=True), np.asarray(features, np.float64),
                               2 * labels - 1, cv=KFold(folds, shuffle=True, random_state=seed))
    return _auroc_columns(scores.reshape(len(labels), -1), labels > 0.5)  # one column comes back flat


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
    with one_blas_thread():
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
    with one_blas_thread():
        gx, gy = x @ x.T, y @ y.T
    denominator = np.sqrt((gx * gx).sum() * (gy * gy).sum())
    return float((gx * gy).sum() / denominator) if denominator > 0 else float("nan")


def cka_matrix(features: dict[str, np.ndarray], others: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """(S, S') linear CKA between every stage of `features` and every stage of `others` (default: itself)."""
    others = features if others is None else others
    return np.array([[linear_cka(a, b) for b in others.values()] for a in features.values()])


# --- the per-pixel read-out -----------------------------------------------------------------------------
# The head turns its features into heatmaps with a 1x1 convolution: a linear map from the C channels at
# each location. The per-pixel probe asks the same of every stage, so "a stage encodes a joint" means what
# it means for the network's own output: the joint's heatmap can be read off that stage linearly.

PIXEL_ALPHAS = np.logspace(-5, 1, 7)  # ridge penalties, in units of the mean squared feature (see _solve)
FIT_PIXELS = 1024  # the fit sees at most this many pixels per sample (a seeded subset); all are decoded


@dataclass
class PixelProbes:
    """Held-out per-pixel linear read-outs of every joint's heatmap from each stage, stages x joints."""

    stages: list[str]
    sides: list[int]  # (S,) each stage's side, in its own pixels
    pck: np.ndarray  # (S, K) held-out PCK (the seed's) of the read-out maps' decoded peaks
    visible_auroc: np.ndarray  # (S, K) held-out AUROC of the read-out's peak height for "labelled visible"
    ceiling: np.ndarray  # (S, K) PCK of the true targets at the stage's resolution, decoded the same way
    chance: np.ndarray  # (K,) PCK of the training folds' mean target map: a read-out with no information
    counted: np.ndarray  # (K,) keypoints scored per joint (labelled, on the heatmap)
    samples: int
    folds: int
    coords: np.ndarray  # (S, N, K, 2) each sample's held-out decoded read-out, heatmap coordinates


def sample_folds(n: int, folds: int, seed: int = 0) -> np.ndarray:
    """(n,) the fold of each sample. Folds hold whole samples: neighbouring pixels of one crop are nearly
    the same example, so a fold split by pixels would score memory, not read-out."""
    return np.random.default_rng(seed).permutation(n) % folds


def stage_targets(keypoints, visibility, heatmap_size: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """The training targets (unit Gaussians, sigma 1, at heatmap resolution) area-averaged to side x side:
    (N, K, side, side) float32, and their weights (N, K) (1: labelled and on the heatmap)."""
    maps, weights = render_heatmaps(torch.as_tensor(np.asarray(keypoints)), torch.as_tensor(np.asarray(visibility)),
                                    heatmap_size)
    return F.adaptive_avg_pool2d(maps, side).numpy(), weights.numpy()


def to_heatmap_coords(coords, side: int, heatmap_size: int) -> np.ndarray:
    """Pixel-centre coordinates on a side x side stage -> heatmap pixel-centre coordinates."""
    return (np.asarray(coords, np.float64) + 0.5) * (heatmap_size / side) - 0.5


def array_batches(features: dict[str, np.ndarray], batch_size: int = DEFAULT_BATCH):
    """(start, {stage: (B, C, r, r)}) batches of in-memory stage maps {stage: (N, C, r, r)}, as
    hgpose.explore.analyses.stage_batches gives them from a model."""
    n = len(next(iter(features.values())))
    for start in range(0, n, batch_size):
        yield start, {name: np.asarray(maps[start : start + batch_size]) for name, maps in features.items()}


@dataclass
class _Moments:
    """Per fold and joint, sums over the fitted pixels of the samples where the joint is labelled:
    x~ = (the C channels, 1) and y = the joint's target at that pixel."""

    xx: np.ndarray  # (F, K, D, D) sum x~ x~^T, D = C + 1
    xy: np.ndarray  # (F, K, D) sum x~ y
    yy: np.ndarray  # (F, K) sum y^2


def _add_moments(moments: _Moments | None, maps, targets, weights, fold, folds: int, rng, fit_pixels: int
                 ) -> _Moments:
    b, c = maps.shape[:2]
    k = targets.shape[1]
    x = np.asarray(maps, np.float64).reshape(b, c, -1).transpose(0, 2, 1)  # (B, P, C)
    y = np.asarray(targets, np.float64).reshape(b, k, -1).transpose(0, 2, 1)  # (B, P, K)
    if x.shape[1] > fit_pixels:  # a different seeded subset per sample
        keep = np.argsort(rng.random((b, x.shape[1])), axis=1)[:, :fit_pixels, None]
        x, y = np.take_along_axis(x, keep, axis=1), np.take_along_axis(y, keep, axis=1)
    x = np.concatenate([x, np.ones(x.shape[:2] + (1,))], axis=2)
    d = c + 1
    if moments is None:
        moments = _Moments(np.zeros((folds, k, d, d)), np.zeros((folds, k, d)), np.zeros((folds, k)))
    gram = (x.transpose(0, 2, 1) @ x).reshape(b, d * d)
    cross = x.transpose(0, 2, 1) @ y  # (B, D, K)
    squares = (y**2).sum(axis=1)  # (B, K)
    for f in np.unique(fold):
        rows = fold == f
        w = np.asarray(weights[rows], np.float64)  # (b, K): an unlabelled joint's pixels do not count
        moments.xx[f] += (w.T @ gram[rows]).reshape(k, d, d)
        moments.xy[f] += np.einsum("bk,bdk->kd", w, cross[rows])
        moments.yy[f] += (w * squares[rows]).sum(axis=0)
    return moments


def _solve(xx, xy, alphas) -> np.ndarray:
    """Ridge weights (A, K, D) from the sums xx (K, D, D), xy (K, D) for penalties `alphas` (A, K) or
    broadcastable, each in units of the joint's mean squared feature (trace of the channels' block / C), so
    that one grid suits every stage's scale; the intercept (last) is not penalised."""
    d = xx.shape[-1]
    scale = np.maximum(np.trace(xx[:, :-1, :-1], axis1=1, axis2=2) / (d - 1), 1e-12)  # (K,)
    penalty = np.eye(d)
    penalty[-1, -1] = 1e-9  # a joint with no labelled pixel in the training folds still solves (to 0)
    lam = np.broadcast_to(np.asarray(alphas, np.float64), np.broadcast_shapes(np.shape(alphas), scale.shape)) * scale
    return np.linalg.solve(xx + lam[..., None, None] * penalty, xy[..., None])[..., 0]


def _squared_error(w, xx, xy, yy) -> np.ndarray:
    """Summed squared error (A, K) of the weights w (A, K, D) on pixels whose sums are xx, xy, yy."""
    return yy - 2 * np.einsum("akd,kd->ak", w, xy) + np.einsum("akd,akd->ak", np.einsum("akd,kde->ake", w, xx), w)


def _fold_weights(moments: _Moments, alphas=PIXEL_ALPHAS) -> np.ndarray:
    """(F, K, D) the weights that predict fold f, fitted on the other folds with the penalty chosen per
    joint among `alphas` by holding out each of those folds in turn (fold f never takes part)."""
    xx, xy, yy = moments.xx, moments.xy, moments.yy
    folds = len(xx)
    grid = np.asarray(alphas, np.float64)[:, None]  # (A, 1)
    weights = np.zeros(xy.shape)
    for f in range(folds):
        inner = [v for v in range(folds) if v != f]
        train_xx, train_xy = xx[inner].sum(0), xy[inner].sum(0)
        error = sum(_squared_error(_solve(train_xx - xx[v], train_xy - xy[v], grid), xx[v], xy[v], yy[v])
                    for v in inner)
        chosen = grid[np.argmin(error, axis=0), 0]  # (K,)
        weights[f] = _solve(train_xx, train_xy, chosen[None])[0]
    return weights


def _predict(maps, weights) -> np.ndarray:
    """Read-out maps (B, K, r, r) of stage maps (B, C, r, r) under per-sample weights (B, K, C + 1)."""
    b, c, r = maps.shape[0], maps.shape[1], maps.shape[-1]
    x = np.asarray(maps, np.float64).reshape(b, c, -1)
    return (np.einsum("bcp,bkc->bkp", x, weights[..., :-1]) + weights[..., -1:]).reshape(b, -1, r, r)


def _decode_on_heatmap(maps, heatmap_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The seed's decoding (peak, quarter-pixel step) of (B, K, r, r) maps, in heatmap coordinates."""
    coords, peaks = decode(np.asarray(maps, np.float32))
    return to_heatmap_coords(coords, maps.shape[-1], heatmap_size), peaks


def pixel_probes(batches, keypoints, visibility, heatmap_size: int, folds: int = 5, seed: int = 0,
                 fit_pixels: int = FIT_PIXELS) -> PixelProbes:
    """Per-pixel linear read-out of the joints' heatmaps from every stage, cross-validated by sample.

    batches: a callable giving a fresh iterable of (start, {stage: (B, C, r, r)}, ...) in sample order,
    called twice (the fit's sums, then the held-out read-out), e.g. `lambda: stage_batches(model, images,
    head=True)` or `lambda: array_batches(features)`; keypoints (N, K, 2) heatmap coordinates, visibility
    (N, K) COCO flags. At every pixel a ridge map from the C channels (and a constant) predicts the K
    target heatmaps resampled to the stage's side r; each fold's samples are read out by the map fitted
    on the other folds, decoded as the network's heatmaps are, and scored with the seed's PCK."""
    with one_blas_thread():
        return _pixel_probes(batches, keypoints, visibility, heatmap_size, folds, seed, fit_pixels)


def _pixel_probes(batches, keypoints, visibility, heatmap_size, folds, seed, fit_pixels) -> PixelProbes:
    keypoints, visibility = np.asarray(keypoints, np.float64), np.asarray(visibility)
    n, k = visibility.shape
    fold = sample_folds(n, folds, seed)
    rng = np.random.default_rng(seed)
    moments: dict[str, _Moments] = {}
    sides: dict[str, int] = {}
    prior = np.zeros((folds, k, heatmap_size, heatmap_size))  # per fold, the sum of its targets
    for start, stages, *_ in batches():
        rows = slice(start, start + len(next(iter(stages.values()))))
        full, weights = stage_targets(keypoints[rows], visibility[rows], heatmap_size, heatmap_size)
        np.add.at(prior, fold[rows], full)  # an unlabelled joint's target is all zeros
        for name, maps in stages.items():
            side = sides.setdefault(name, maps.shape[-1])
            targets = F.adaptive_avg_pool2d(torch.as_tensor(full), side).numpy()
            moments[name] = _add_moments(moments.get(name), np.asarray(maps), targets, weights, fold[rows], folds,
                                         rng, fit_pixels)
    names = list(moments)
    counted = counted_mask(visibility)
    normalizer = seed_normalizer(heatmap_size)
    empty = np.full((len(names), k), np.nan)
    if n < 2 * folds:  # a fold of a sample or two: no held-out estimate worth the name
        return PixelProbes(names, [sides[s] for s in names], empty, empty.copy(), empty.copy(), np.full(k, np.nan),
                           counted.sum(0), n, folds, np.full((len(names), n, k, 2), np.nan))
    weights = {name: _fold_weights(moments[name]) for name in names}
    coords = {name: np.zeros((n, k, 2)) for name in names}
    best = {name: np.zeros((n, k, 2)) for name in names}  # the true targets at the stage's side, decoded
    peaks = {name: np.zeros((n, k)) for name in names}
    for start, stages, *_ in batches():
        rows = slice(start, start + len(next(iter(stages.values()))))
        full, _ = stage_targets(keypoints[rows], visibility[rows], heatmap_size, heatmap_size)
        for name, maps in stages.items():
            read = _predict(np.asarray(maps), weights[name][fold[rows]])
            coords[name][rows], peaks[name][rows] = _decode_on_heatmap(read, heatmap_size)
            best[name][rows] = _decode_on_heatmap(F.adaptive_avg_pool2d(torch.as_tensor(full), sides[name]).numpy(),
                                                  heatmap_size)[0]

    def score(predicted):
        correct = (normalized_distances(predicted, keypoints, normalizer) < 0.5) & counted
        with np.errstate(invalid="ignore", divide="ignore"):
            return correct.sum(0) / np.where(counted.sum(0) > 0, counted.sum(0), np.nan)

    # chance: each fold gets the peak of the other folds' mean target map (a sum has the same peak)
    guesses, _ = _decode_on_heatmap(prior.sum(0) - prior, heatmap_size)  # (F, K, 2)
    return PixelProbes(
        stages=names, sides=[sides[s] for s in names],
        pck=np.stack([score(coords[s]) for s in names]),
        visible_auroc=np.stack([_auroc_columns(peaks[s], visibility == 2) for s in names]),
        ceiling=np.stack([score(best[s]) for s in names]),
        chance=score(guesses[fold]), counted=counted.sum(0), samples=n, folds=folds,
        coords=np.stack([coords[s] for s in names]))


def _auroc_columns(scores, labels) -> np.ndarray:
    """AUROC of each column of scores (N, M) for binary labels (N, M); NaN where a class has < 2 samples."""
    from sklearn.metrics import roc_auc_score

    result = np.full(labels.shape[1], np.nan)
    for m in range(labels.shape[1]):
        if min(labels[:, m].sum(), (~labels[:, m]).sum()) >= 2 and np.isfinite(scores[:, m]).all():
            result[m] = roc_auc_score(labels[:, m], scores[:, m])
    return result


def model_pixel_probes(model: HourglassNet, images, keypoints, visibility, folds: int = 5, seed: int = 0,
                       batch_size: int = DEFAULT_BATCH, stack: int = -1) -> PixelProbes:
    """pixel_probes of every stage of a model (probe_stage_names order) on crops (N, 3, S, S): two forward
    passes over the crops, memory of a few (C + 1)^2 x 17 x folds sums per stage."""
    return pixel_probes(lambda: stage_batches(model, images, stack, batch_size, head=True), keypoints, visibility,
                        model.config.heatmap_size, folds, seed)
