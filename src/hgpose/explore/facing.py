"""Where left and right are decided: each person's facing from its ground-truth keypoints, linear probes of
every stage for it, and how left/right inversions relate to confidence.

Facing, from the keypoints alone: a person faces the camera when its left side appears on the image's
right of its right side, seen along its own body axis (so that a person lying down or upside down gets
the same answer as one standing). The body axis `up` runs from the mid-hips to the mid-shoulders; for each
labelled left/right pair (shoulders, hips) the lateral vector d = left - right gives the cross product
up x d (image y points down), positive when the person faces the camera. The pairs' mean, divided by the
torso length, is the body score; when it is under BODY_TIE (a profile view: the shoulders and hips nearly
overlap), the ears' and eyes' pairs decide the same way if their score reaches FACE_TIE; otherwise the
facing is undecided (0). Without both a shoulder and a hip the axis is the image's up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hgpose.explore.probes import RIDGE_ALPHAS, one_blas_thread, sample_folds
from hgpose.keypoints import twin_of
from hgpose.synth import YAW_FIELD

FRONT, BACK, UNDECIDED = 1, -1, 0
BODY_PAIRS = ((5, 6), (11, 12))  # shoulders, hips: (left, right)
FACE_PAIRS = ((3, 4), (1, 2))  # ears, eyes
BODY_TIE = 0.15  # of the torso length: below it the shoulders and hips are too close to call
FACE_TIE = 0.05  # of the torso length (ears and eyes lie closer together than shoulders)
CONFIDENT_ACCURACY = 0.9  # a stage "decodes" facing when its held-out accuracy reaches this


def _pair_score(points, labelled, pairs, up) -> tuple[np.ndarray, np.ndarray]:
    """Mean cross product up x (left - right) over each sample's labelled pairs (N,), and whether any was."""
    total, count = np.zeros(len(points)), np.zeros(len(points))
    for left, right in pairs:
        both = labelled[:, left] & labelled[:, right]
        d = points[:, left] - points[:, right]
        cross = up[:, 0] * d[:, 1] - up[:, 1] * d[:, 0]
        total += np.where(both, cross, 0.0)
        count += both
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), 0.0), count > 0


def _mean_of(points, labelled, joints) -> tuple[np.ndarray, np.ndarray]:
    weights = labelled[:, joints].astype(np.float64)
    count = weights.sum(1)
    mean = (points[:, joints] * weights[..., None]).sum(1) / np.maximum(count, 1)[:, None]
    return mean, count > 0


def facing_from_keypoints(keypoints, visibility) -> tuple[np.ndarray, np.ndarray]:
    """Per person: facing (N,) int (FRONT 1: towards the camera, BACK -1: away, UNDECIDED 0) and its score
    (N,) (signed, in torso lengths: how clearly the keypoints show it). keypoints (N, K, 2) in any image
    coordinates (x right, y down), visibility (N, K) COCO flags (1 or 2: labelled)."""
    points = np.asarray(keypoints, np.float64)
    labelled = (np.asarray(visibility) == 1) | (np.asarray(visibility) == 2)
    shoulders, has_shoulder = _mean_of(points, labelled, [5, 6])
    hips, has_hip = _mean_of(points, labelled, [11, 12])
    axis = shoulders - hips
    torso = np.linalg.norm(axis, axis=1)
    known = has_shoulder & has_hip & (torso > 1e-9)
    # without a torso, a third of the keypoints' extent (a torso is about a third of a person)
    scale = np.where(known, torso, np.maximum(_extent(points, labelled) / 3, 1e-9))
    up = np.where(known[:, None], axis / np.maximum(torso, 1e-9)[:, None], np.array([0.0, -1.0]))
    body, has_body = _pair_score(points, labelled, BODY_PAIRS, up)
    face, has_face = _pair_score(points, labelled, FACE_PAIRS, up)
    body, face = body / scale, face / scale
    by_body = has_body & (np.abs(body) >= BODY_TIE)
    by_face = ~by_body & has_face & (np.abs(face) >= FACE_TIE)
    score = np.where(by_body, body, np.where(by_face, face, np.where(has_body, body, face)))
    facing = np.where(by_body | by_face, np.sign(score), UNDECIDED).astype(np.int64)
    return facing, score


def _extent(points, labelled) -> np.ndarray:
    """The larger side of each person's labelled keypoints' bounding box (0 without any)."""
    out = np.zeros(len(points))
    for i in range(len(points)):
        if labelled[i].any():
            p = points[i, labelled[i]]
            out[i] = float((p.max(0) - p.min(0)).max())
    return out


def known_facing(annotations) -> np.ndarray | None:
    """The facing a generator recorded on each annotation, or None when an annotation lacks it: a "facing"
    field (a number, its sign; or "front"/"back"), hgpose synth's "hgpose_yaw" in degrees, or a "yaw"
    in radians (0 facing the camera: the sign of cos(yaw))."""
    found = []
    for annotation in annotations:
        if "facing" in annotation:
            value = annotation["facing"]
            if isinstance(value, str):
                value = {"front": FRONT, "back": BACK}.get(value.lower(), UNDECIDED)
            found.append(int(np.sign(float(value))))
        elif YAW_FIELD in annotation:
            found.append(int(np.sign(np.cos(np.radians(float(annotation[YAW_FIELD]))))))
        elif "yaw" in annotation:
            found.append(int(np.sign(np.cos(float(annotation["yaw"])))))
        else:
            return None
    return np.asarray(found, np.int64)


@dataclass
class FacingProbes:
    """Held-out linear read-out of facing (front vs back) from each stage, over the decided samples."""

    stages: list[str]
    accuracy: np.ndarray  # (S,)
    low: np.ndarray  # (S,) 95% bootstrap interval over samples
    high: np.ndarray
    scores: np.ndarray  # (S, M) out-of-fold decision values (positive: front) of the M decided samples
    rows: np.ndarray  # (M,) the decided samples' positions among all N
    labels: np.ndarray  # (M,) their facing
    majority: float  # accuracy of always answering the commoner facing
    folds: int


def facing_probes(features: dict[str, np.ndarray], facing, folds: int = 5, seed: int = 0,
                  resamples: int = 1000) -> FacingProbes:
    """Ridge read-out (regularisation chosen by efficient leave-one-out inside the training folds) of facing
    from each stage's features {stage: (N, D)}, e.g. pooled_stages; the folds are the per-pixel probe's
    (hgpose.explore.probes.sample_folds over all N samples), restricted to the decided ones."""
    from sklearn.linear_model import RidgeCV

    facing = np.asarray(facing)
    fold = sample_folds(len(facing), folds, seed)
    rows = np.flatnonzero(facing != UNDECIDED)
    labels = facing[rows]
    stages = list(features)
    scores = np.full((len(stages), len(rows)), np.nan)
    enough = len(rows) >= 2 * folds and len(np.unique(labels)) == 2
    with one_blas_thread():
        for s, name in enumerate(stages if enough else []):
            x = np.asarray(features[name], np.float64)[rows]
            for f in range(folds):
                test, train = fold[rows] == f, fold[rows] != f
                if test.any() and len(np.unique(labels[train])) == 2:
                    scores[s, test] = RidgeCV(alphas=RIDGE_ALPHAS).fit(x[train], labels[train]).predict(x[test])
    correct = np.sign(scores) == labels[None]
    draws = np.random.default_rng(seed).integers(0, max(len(rows), 1), size=(resamples, len(rows)))
    accuracy = np.where(np.isfinite(scores).all(1), correct.mean(1) if len(rows) else np.nan, np.nan)
    resampled = correct[:, draws].mean(2) if len(rows) else np.full((len(stages), resamples), np.nan)
    low, high = np.percentile(resampled, [2.5, 97.5], axis=1)
    low, high = np.where(np.isfinite(accuracy), low, np.nan), np.where(np.isfinite(accuracy), high, np.nan)
    majority = float(max((labels == FRONT).mean(), (labels == BACK).mean())) if len(rows) else float("nan")
    return FacingProbes(stages, accuracy, low, high, scores, rows, labels, majority, folds)


def twin_landings(coords, keypoints, visibility, normalizer: float):
    """Per person and keypoint (N, K) bool: on_twin, the prediction lands on its left/right twin (within the PCK
    radius of the twin's true position and closer to it than to its own); on_own, it lands on its own joint,
    closer to it; both, the keypoint and its twin are labelled. The one test every left/right figure uses."""
    coords, keypoints = np.asarray(coords, np.float64), np.asarray(keypoints, np.float64)
    labelled = (np.asarray(visibility) == 1) | (np.asarray(visibility) == 2)
    count = keypoints.shape[1]
    twins = np.array([twin_of(j, count) if twin_of(j, count) is not None else j for j in range(count)])
    both = labelled & labelled[:, twins] & (twins != np.arange(count))
    own = np.linalg.norm(coords - keypoints, axis=-1)
    other = np.linalg.norm(coords - keypoints[:, twins], axis=-1)
    radius = 0.5 * normalizer
    return both & (other < own) & (other < radius), both & (own <= other) & (own < radius), both


def sample_inversions(coords, keypoints, visibility, normalizer: float) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: whether any predicted left or right keypoint lands on its twin (within the PCK radius of
    the twin's true position and closer to it than to its own), and whether any pair could (both labelled)."""
    on_twin, _, both = twin_landings(coords, keypoints, visibility, normalizer)
    return on_twin.any(axis=1), both.any(axis=1)


@dataclass
class RateByBin:
    edges: np.ndarray  # (B + 1,) confidence bin edges (quantiles)
    rate: np.ndarray  # (B,) inversion rate per bin
    low: np.ndarray  # (B,) 95% Wilson interval
    high: np.ndarray
    count: np.ndarray  # (B,) samples per bin


def rate_by_confidence(confidence, inverted, bins: int = 3) -> RateByBin:
    """The inversion rate in `bins` equal-count bins of confidence, with Wilson 95% intervals."""
    confidence, inverted = np.asarray(confidence, np.float64), np.asarray(inverted, bool)
    edges = np.quantile(confidence, np.linspace(0, 1, bins + 1)) if len(confidence) else np.zeros(bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins).astype(np.float64)
    hits = np.bincount(which, weights=inverted.astype(np.float64), minlength=bins)
    low, high = wilson(hits, count)
    with np.errstate(invalid="ignore", divide="ignore"):
        return RateByBin(edges, np.where(count > 0, hits / count, np.nan), low, high, count)


def wilson(hits, count, z: float = 1.96) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a proportion hits / count (NaN where count is 0)."""
    hits, count = np.asarray(hits, np.float64), np.asarray(count, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = hits / count
        centre = (p + z**2 / (2 * count)) / (1 + z**2 / count)
        half = z * np.sqrt(p * (1 - p) / count + z**2 / (4 * count**2)) / (1 + z**2 / count)
    return centre - half, centre + half


def wrong_side_share(coords, keypoints, visibility, normalizer: float) -> float:
    """Of the left/right keypoints (twin labelled too) that land within the PCK radius of their own or their twin's
    true position, the share that land on the twin: which side, given that the pair was found. A read-out that
    finds nothing has no side to get wrong, so this is not lowered by missing everything."""
    on_twin, on_own, _ = twin_landings(coords, keypoints, visibility, normalizer)
    landed = int((on_twin | on_own).sum())
    return int(on_twin.sum()) / landed if landed else float("nan")


def readout_inversions(pixel, keypoints, visibility, normalizer: float) -> np.ndarray:
    """(S,) wrong_side_share of the per-pixel probe's read-out of each stage (pixel: probes.PixelProbes)."""
    return np.asarray([wrong_side_share(coords, keypoints, visibility, normalizer) for coords in pixel.coords])
