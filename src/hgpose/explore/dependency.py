"""Which joints the model uses to find a joint: hide the image around joint j (a grey disc the size of the
occlusion patch) and measure what happens to every joint i."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from hgpose.explore.analyses import DEFAULT_BATCH, as_crops, heatmaps, occlusion_defaults, to_input_coords
from hgpose.model.heatmaps import decode_heatmaps
from hgpose.model.hourglass import HourglassNet


@dataclass
class JointDependency:
    """[i, j]: the effect on joint i of masking joint j, averaged over the samples with joint j labelled."""

    confidence_drop: np.ndarray  # (K, K) clean peak - masked peak of joint i
    shift: np.ndarray  # (K, K) distance joint i's decoded keypoint moves, input pixels
    masked: np.ndarray  # (K,) samples in which joint j was labelled, and so masked
    radius: float  # of the disc, input pixels
    per_sample_drop: np.ndarray | None = field(default=None, repr=False)  # (N, K, K), NaN where j is not labelled
    separation: np.ndarray | None = None  # (K, K) median distance between joints i and j, input pixels

    def inside_occluder(self) -> np.ndarray:
        """(K, K) pairs whose joints lie a median less than the disc's radius apart: hiding j hides i too, so
        i's drop says nothing about reliance."""
        if self.separation is None:
            return np.zeros(self.confidence_drop.shape, bool)
        return np.nan_to_num(self.separation, nan=np.inf) < self.radius

    def drop_intervals(self, resamples: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """95% percentile bootstrap intervals over samples of confidence_drop: (low (K, K), high (K, K))."""
        import warnings

        drops = self.per_sample_drop
        n = len(drops)
        draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            means = np.stack([np.nanmean(drops[rows], axis=0) for rows in draws])
            low, high = np.nanpercentile(means, [2.5, 97.5], axis=0)
        return low, high

    def surviving_pairs(self, count: int = 5, seed: int = 0) -> list[tuple[int, int, float, float, float]]:
        """The largest off-diagonal drops (i, j, drop, low, high) whose joints lie outside each other's occluder
        and whose 95% interval excludes zero, largest first."""
        low, high = self.drop_intervals(seed=seed)
        outside = ~self.inside_occluder()
        kept = [(i, j, v, float(low[i, j]), float(high[i, j])) for i, j, v in self.strongest_pairs(len(low) ** 2)
                if outside[i, j] and low[i, j] > 0]
        return kept[:count]

    def strongest_pairs(self, count: int = 5, what: str = "confidence_drop") -> list[tuple[int, int, float]]:
        """The `count` largest off-diagonal entries as (i, j, value), largest first, NaNs skipped."""
        matrix = np.array(getattr(self, what), np.float64)
        np.fill_diagonal(matrix, np.nan)
        order = np.argsort(np.where(np.isnan(matrix), -np.inf, matrix), axis=None)[::-1]
        pairs = [(int(i), int(j)) for i, j in zip(*np.unravel_index(order, matrix.shape))]
        return [(i, j, float(matrix[i, j])) for i, j in pairs if np.isfinite(matrix[i, j])][:count]


def disc_masks(points, size: int, radius: float) -> np.ndarray:
    """(M, size, size) booleans: a disc of `radius` input pixels around each input pixel-centre point (M, 2)."""
    ys, xs = np.mgrid[0:size, 0:size]
    points = np.asarray(points, np.float64)
    return (xs - points[:, 0, None, None]) ** 2 + (ys - points[:, 1, None, None]) ** 2 <= radius**2


@torch.no_grad()
def joint_dependency(model: HourglassNet, images, keypoints, visibility, radius: float | None = None,
                     fill: int = 128, batch_size: int = DEFAULT_BATCH) -> JointDependency:
    """17 x 17 dependency matrix over crops (N, 3, S, S) with true keypoints (N, K, 2, heatmap coordinates)
    and visibility (N, K): every labelled joint j of every sample is hidden under a grey disc of `radius`
    input pixels (default: half the occlusion patch, S / 16) centred on its true position, one at a time.
    Costs one forward pass per labelled keypoint."""
    images = as_crops(images)
    config = model.config
    size = config.input_size
    radius = occlusion_defaults(size)[0] / 2 if radius is None else radius
    points = to_input_coords(keypoints, size, config.heatmap_size)
    labelled = (np.asarray(visibility) == 1) | (np.asarray(visibility) == 2)
    k = labelled.shape[1]
    clean_coords, clean_conf = decode_heatmaps(torch.as_tensor(heatmaps(model, images, batch_size)))
    scale = size / config.heatmap_size
    drop_sum, shift_sum = np.zeros((k, k)), np.zeros((k, k))
    per_sample = np.full((len(images), k, k), np.nan)
    for n in range(len(images)):
        joints = np.flatnonzero(labelled[n])
        if not len(joints):
            continue
        masks = torch.as_tensor(disc_masks(points[n, joints], size, radius))  # (J, S, S)
        masked = images[n].repeat(len(joints), 1, 1, 1)
        masked[masks[:, None].expand_as(masked)] = fill
        coords, conf = decode_heatmaps(torch.as_tensor(heatmaps(model, masked, batch_size)))
        drop = (clean_conf[n] - conf).numpy()  # (J, K): masked joint x affected joint
        shift = (torch.linalg.vector_norm(coords - clean_coords[n], dim=-1) * scale).numpy()
        drop_sum[:, joints] += drop.T
        per_sample[n][:, joints] = drop.T
        shift_sum[:, joints] += shift.T
    masked_count = labelled.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        denominator = np.where(masked_count > 0, masked_count, np.nan)[None, :]
        return JointDependency(drop_sum / denominator, shift_sum / denominator, masked_count, float(radius),
                               per_sample, _separation(points, labelled))


def _separation(points, labelled) -> np.ndarray:
    """(K, K) median distance (input pixels) between joints i and j over the samples where both are labelled."""
    import warnings

    distance = np.linalg.norm(points[:, :, None] - points[:, None, :], axis=-1)  # (N, K, K)
    both = labelled[:, :, None] & labelled[:, None, :]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(np.where(both, distance, np.nan), axis=0)
