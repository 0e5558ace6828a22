"""What each channel detects: network dissection (Bau et al. 2017) for pose.

Every channel of every stage is thresholded at its own top quantile over the samples (the threshold is
taken on the stage's own grid, as in network dissection, then the map is upsampled bilinearly to a
`side` x `side` grid over the crop), and the resulting mask is compared with each body part's region:
- a joint's region is a disc of JOINT_RADIUS x the crop side around the keypoint (the crop is 1.25 times
  the person box, so this is a fixed share of the person's size);
- a limb's region is the segment between two keypoints of the COCO skeleton, thickened to LIMB_RADIUS.
IoU(channel, part) = sum over samples of |mask & region| / sum of |mask | region|, over the samples where
the part is labelled. Two chance levels: the same scores with each sample's activations paired with
another sample's regions (shuffled part masks: what a channel that fires at a fixed place of the crop gets),
and a randomly initialised model's dissection (what an unlearned network gets). A detector must beat both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from hgpose.evaluation.pck import counted_mask
from hgpose.explore.analyses import stage_batches
from hgpose.keypoints import KEYPOINT_NAMES, SKELETON
from hgpose.model.hourglass import build_model

JOINT_RADIUS = 0.075  # of the crop side: a little over the seed's PCK radius (0.05 of the crop side)
LIMB_RADIUS = 0.04  # of the crop side: half the thickness of a limb's region
IOU_THRESHOLD = 0.04  # network dissection's: a unit with a best IoU under this detects nothing
MAX_SIDE = 32  # the masks are compared on at most this grid over the crop (cost grows with its square)
QUANTILE_PIXELS = 256  # pixels per sample and channel that the threshold is estimated from (seeded subset)
LIMBS = tuple((a - 1, b - 1) for a, b in SKELETON)


def _short(name: str) -> str:
    return name.replace("left_", "L ").replace("right_", "R ")


PART_NAMES = (*(_short(n) for n in KEYPOINT_NAMES),
              *(f"{_short(KEYPOINT_NAMES[a])}-{_short(KEYPOINT_NAMES[b])}" for a, b in LIMBS))


def part_masks(keypoints, visibility, heatmap_size: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Regions of the 17 joints and the skeleton's limbs on a side x side grid over the crop: masks
    (N, P, side, side) bool and labelled (N, P) bool (a limb is labelled when both its joints are).
    keypoints (N, K, 2) heatmap pixel-centre coordinates, visibility (N, K) COCO flags."""
    points = (np.asarray(keypoints, np.float64) + 0.5) * (side / heatmap_size) - 0.5
    joint_labelled = counted_mask(visibility)
    ys, xs = np.mgrid[0:side, 0:side].astype(np.float64)
    dx, dy = xs - points[..., 0, None, None], ys - points[..., 1, None, None]  # (N, K, side, side)
    joints = dx**2 + dy**2 <= (JOINT_RADIUS * side) ** 2
    limbs = []
    for a, b in LIMBS:
        p, q = points[:, a, :, None, None], points[:, b, :, None, None]
        d = q - p  # (N, 2, 1, 1)
        length2 = np.maximum((d**2).sum(axis=1), 1e-12)
        t = np.clip(((xs - p[:, 0]) * d[:, 0] + (ys - p[:, 1]) * d[:, 1]) / length2, 0, 1)
        limbs.append((xs - p[:, 0] - t * d[:, 0]) ** 2 + (ys - p[:, 1] - t * d[:, 1]) ** 2
                     <= (LIMB_RADIUS * side) ** 2)
    masks = np.concatenate([joints, np.stack(limbs, axis=1)], axis=1)
    labelled = np.concatenate([joint_labelled, np.stack([joint_labelled[:, a] & joint_labelled[:, b]
                                                         for a, b in LIMBS], axis=1)], axis=1)
    return masks & labelled[..., None, None], labelled


def derangement(n: int, seed: int = 0) -> np.ndarray:
    """A seeded permutation of n samples with no fixed point (for n > 1): sample i gets partner[i]'s regions."""
    order = np.random.default_rng(seed).permutation(n)
    partner = np.empty(n, dtype=np.int64)
    partner[order] = np.roll(order, -1)
    return partner


@dataclass
class Dissection:
    """Per stage, every channel scored against every part; per-sample sums kept for bootstrap intervals."""

    stages: list[str]
    parts: tuple[str, ...]
    intersection: list[np.ndarray]  # per stage (N, C, P): |mask & region| per sample, grid pixels
    shuffled_intersection: list[np.ndarray]  # per stage (N, C, P): the same against the partner's regions
    active: list[np.ndarray]  # per stage (N, C): |mask| per sample
    peak: list[np.ndarray]  # per stage (N, C): the channel's largest activation on each sample
    region: np.ndarray  # (N, P): |region| per sample
    labelled: np.ndarray  # (N, P)
    partner: np.ndarray  # (N,) whose regions the shuffled scores use
    thresholds: list[np.ndarray]  # per stage (C,)
    top: float  # the share of activations above the threshold
    side: int

    @property
    def samples(self) -> int:
        return len(self.region)

    def iou(self, stage: int, shuffled: bool = False, rows=None) -> np.ndarray:
        """(C, P) IoU of every channel of a stage with every part (over `rows`, default all samples)."""
        rows = np.arange(self.samples) if rows is None else np.asarray(rows)
        inter = (self.shuffled_intersection if shuffled else self.intersection)[stage][rows]
        labelled = (self.labelled[self.partner] if shuffled else self.labelled)[rows].astype(np.float64)
        region = (self.region[self.partner] if shuffled else self.region)[rows]
        total_inter = np.einsum("ncp,np->cp", inter, labelled)
        union = self.active[stage][rows].T @ labelled + (region * labelled).sum(0)[None] - total_inter  # (C, P)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, total_inter / union, np.nan)

    def best(self, shuffled: bool = False) -> np.ndarray:
        """(S, P) the best IoU any channel of each stage reaches for each part."""
        return np.stack([np.nanmax(np.nan_to_num(self.iou(s, shuffled), nan=0.0), axis=0)
                         for s in range(len(self.stages))])


def dissect(batches, keypoints, visibility, heatmap_size: int, side: int | None = None, top: float | None = None,
            seed: int = 0) -> Dissection:
    """Network dissection of every stage that `batches` gives.

    batches: a callable giving a fresh iterable of (start, {stage: (B, C, r, r)}, ...) in sample order,
    called twice (thresholds, then the masks), e.g. `lambda: stage_batches(model, images, head=True)` or
    `lambda: array_batches(features)`. top: the share of each channel's activations kept (default: the mean
    share of the crop a labelled joint's region covers, so that a perfect joint detector can reach IoU 1).
    side: the comparison grid (default: the crop side, at most MAX_SIDE)."""
    keypoints, visibility = np.asarray(keypoints, np.float64), np.asarray(visibility)
    side = side or min(MAX_SIDE, 4 * heatmap_size)
    masks, labelled = part_masks(keypoints, visibility, heatmap_size, side)
    region = masks.reshape(len(masks), masks.shape[1], -1).sum(-1).astype(np.float64)
    if top is None:
        k = len(KEYPOINT_NAMES)
        share = region[:, :k][labelled[:, :k]] / side**2
        top = float(share.mean()) if share.size else 0.02
    partner = derangement(len(masks), seed)
    thresholds = _thresholds(batches, top, seed)
    names = list(thresholds)
    inter = {s: [] for s in names}
    shuffled = {s: [] for s in names}
    active = {s: [] for s in names}
    peak = {s: [] for s in names}
    flat = torch.as_tensor(masks.reshape(len(masks), masks.shape[1], -1), dtype=torch.float32)
    for start, stages, *_ in batches():
        rows = slice(start, start + len(next(iter(stages.values()))))
        own, other = flat[rows], flat[partner[rows]]
        for name, maps in stages.items():
            maps = torch.as_tensor(np.asarray(maps), dtype=torch.float32)
            up = F.interpolate(maps, size=(side, side), mode="bilinear", align_corners=False)
            on = (up > torch.as_tensor(thresholds[name])[None, :, None, None]).flatten(2).float()  # (B, C, X)
            inter[name].append(torch.einsum("bcx,bpx->bcp", on, own).numpy())
            shuffled[name].append(torch.einsum("bcx,bpx->bcp", on, other).numpy())
            active[name].append(on.sum(-1).numpy())
            peak[name].append(maps.flatten(2).amax(-1).numpy())
    return Dissection(names, PART_NAMES, [np.concatenate(inter[s]) for s in names],
                      [np.concatenate(shuffled[s]) for s in names], [np.concatenate(active[s]) for s in names],
                      [np.concatenate(peak[s]) for s in names], region, labelled, partner,
                      [thresholds[s] for s in names], top, side)


def _thresholds(batches, top: float, seed: int) -> dict[str, np.ndarray]:
    """Per stage, each channel's (1 - top) quantile over a seeded subset of its pixels on its own grid."""
    rng = np.random.default_rng(seed)
    values: dict[str, list[np.ndarray]] = {}
    for _, stages, *_ in batches():
        for name, maps in stages.items():
            flat = np.asarray(maps, np.float32).reshape(maps.shape[0], maps.shape[1], -1)  # (B, C, X)
            if flat.shape[-1] > QUANTILE_PIXELS:
                flat = flat[:, :, rng.choice(flat.shape[-1], QUANTILE_PIXELS, replace=False)]
            values.setdefault(name, []).append(flat.transpose(1, 0, 2).reshape(flat.shape[1], -1))
    return {name: np.quantile(np.concatenate(parts, axis=1), 1 - top, axis=1) for name, parts in values.items()}


@dataclass
class Detector:
    stage: str
    channel: int
    part: str
    iou: float
    chance: float  # the larger of the two chance levels for this stage and part


def detectors(trained: Dissection, random: Dissection | None = None, threshold: float = IOU_THRESHOLD,
              seed: int = 0) -> list[list[Detector]]:
    """Per stage, the channels whose best part's IoU reaches `threshold` and beats both chance levels with the
    lower end of its 95% bootstrap interval: the best IoU any channel of the stage reaches for that part with
    shuffled regions, and (given) the best IoU any channel of the randomly initialised model's same stage
    reaches. Each channel is named by its best part only (as in network dissection). Best first."""
    chance = chance_levels(trained, random)
    found = []
    for s, name in enumerate(trained.stages):
        iou = np.nan_to_num(trained.iou(s), nan=0.0)
        best_part = iou.argmax(axis=1)
        best = iou[np.arange(len(iou)), best_part]
        candidates = np.flatnonzero((best >= threshold) & (best > chance[s, best_part]))
        lows = iou_intervals(trained, s, candidates, best_part[candidates], seed=seed)[0]
        stage = [Detector(name, int(c), trained.parts[best_part[c]], float(best[c]), float(chance[s, best_part[c]]))
                 for c, low in zip(candidates, lows) if low > chance[s, best_part[c]]]
        found.append(sorted(stage, key=lambda d: -d.iou))
    return found


def chance_levels(trained: Dissection, random: Dissection | None = None) -> np.ndarray:
    """(S, P) the larger of the shuffled-regions best IoU and the random model's best IoU per stage and part."""
    chance = trained.best(shuffled=True)
    if random is not None:
        chance = np.maximum(chance, random.best())
    return chance


def iou_intervals(dissection: Dissection, stage: int, channels, parts, resamples: int = 1000, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """95% percentile bootstrap intervals over samples (low (M,), high (M,)) of the IoU of channels[m] with
    parts[m] of one stage."""
    channels, parts = np.asarray(channels, np.int64), np.asarray(parts, np.int64)
    if not len(channels):
        return np.zeros(0), np.zeros(0)
    n = dissection.samples
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    labelled = dissection.labelled[:, parts]  # (N, M)
    inter = dissection.intersection[stage][:, channels, parts] * labelled
    union = (dissection.active[stage][:, channels] + dissection.region[:, parts]) * labelled - inter
    sums_i, sums_u = inter[draws].sum(1), union[draws].sum(1)  # (R, M)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(sums_u > 0, sums_i / sums_u, np.nan)
    low, high = np.nanpercentile(values, [2.5, 97.5], axis=0)
    return low, high


def iou_interval(dissection: Dissection, stage: int, channel: int, part: int, resamples: int = 1000,
                 seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval over samples of one channel's IoU with one part."""
    low, high = iou_intervals(dissection, stage, [channel], [part], resamples, seed)
    return float(low[0]), float(high[0])


def model_dissection(model, images, keypoints, visibility, stack: int = -1, batch_size: int = 16, seed: int = 0,
                     top: float | None = None) -> Dissection:
    """dissect() every stage of a model (stage_names plus "head") on crops (N, 3, S, S): two forward passes."""
    return dissect(lambda: stage_batches(model, images, stack, batch_size, head=True), keypoints, visibility,
                   model.config.heatmap_size, top=top, seed=seed)


def random_twin(model, seed: int = 0):
    """A randomly initialised model of the same configuration, on the same device, in eval mode (the chance
    reference of the dissection, as in the report's model-randomisation check)."""
    device = next(model.parameters()).device
    return build_model(model.config, seed=seed).to(device).eval()


@torch.no_grad()
def channel_maps(model, images, stage: str, channel: int, stack: int = -1, batch_size: int = 16) -> np.ndarray:
    """(N, r, r) one channel of one stage on the crops (for the gallery of top-activating crops)."""
    parts = [stages[stage][:, channel].numpy() for _, stages, _ in
             stage_batches(model, images, stack, batch_size, head=True)]
    return np.concatenate(parts)
