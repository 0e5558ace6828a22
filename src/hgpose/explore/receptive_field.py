"""How far each stage sees: the effective receptive field (Luo et al. 2016) next to the theoretical one.

The theoretical receptive field of a unit is every input pixel that can change it; the effective one is how
much each pixel does: the magnitude of the unit's gradient with respect to the input, summed over colour
channels. Each sample's map is normalised to sum 1 (every sample weighs the same), centred on the unit and
averaged; the ERF's size is given as the radii of the smallest discs around the unit that hold 50% and 90%
of the mass. Units: for each joint, its output heatmap at the true keypoint; for each stage, the sum of the
stage's channels at the grid cell holding the true keypoint (gradients of a sum of channels: Luo's unit).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hgpose.evaluation.pck import counted_mask
from hgpose.explore.analyses import as_crops, evaluating, forward_hooks, hourglass_levels, stage_names
from hgpose.keypoints import KEYPOINT_NAMES
from hgpose.model.hourglass import to_model_input

STAGE_JOINTS = 4  # the stages' units are taken at up to this many of a sample's joints (cost: 1 pass per stage)
PERSON_SHARE = 1 / 1.25  # the crop is 1.25 times the person box: a person is about 0.8 crop sides tall


def theoretical_rf(config, stack: int = -1) -> dict[str, int]:
    """The side, in input pixels, of the theoretical receptive field of one unit of each stage (stage_names
    plus "head", the heatmaps' input) of hourglass `stack`: (side, jump) grow through every convolution and
    pooling; a level's output takes the larger of its skip branch and its pooled low branch, and nearest
    upsampling keeps the side. Later stacks start from the previous stack's head (1x1 merges add nothing)."""
    side, jump = 7, 2  # the stem's 7x7 convolution, stride 2
    side += 2 * jump  # stem_res1: one 3x3 convolution
    side, jump = side + jump, 2 * jump  # max-pooling 2x2, stride 2
    side += 2 * 2 * jump  # stem_res2, stem_res3
    names = stage_names(config.depth)
    stacks = config.num_stacks if stack < 0 else stack + 1
    stack = stacks - 1 if stack < 0 else stack
    sides: dict[str, int] = {}
    for current in range(stacks):
        found = {"stem": side}
        side = _level(side, jump, 1, config, found)
        side += 2 * jump  # the head's residual; its 1x1 convolutions add nothing
        found["head"] = side
        if current == stack:
            sides = found
    return {name: sides[name] for name in [*names, "head"]}


def _level(side: int, jump: int, level: int, config, found: dict) -> int:
    """The side of level `level`'s output given its input's (side, jump), recording its stages in `found`."""
    per_level = 2 * config.residuals_per_level  # each residual has one 3x3 convolution
    skip = side + per_level * jump
    low, low_jump = side + jump, 2 * jump  # max-pooling
    low += per_level * low_jump
    found[f"down{level}"] = low
    if level < config.depth:
        low = _level(low, low_jump, level + 1, config, found)
    else:
        low += 2 * config.innermost_residuals * low_jump
        found["bottleneck"] = low
    low += per_level * low_jump  # low3, then nearest upsampling: the side stays
    found[f"up{level}"] = max(skip, low)
    return found[f"up{level}"]


def centred(maps, centres) -> np.ndarray:
    """(B, 2S - 1, 2S - 1) copies of maps (B, S, S) shifted so that each centre (B, 2) (x, y input pixel-centre
    coordinates, rounded) lands on pixel (S - 1, S - 1); zeros where the crop does not reach."""
    maps = np.asarray(maps, np.float64)
    b, s = maps.shape[0], maps.shape[-1]
    out = np.zeros((b, 2 * s - 1, 2 * s - 1))
    for i, (x, y) in enumerate(np.rint(np.asarray(centres)).astype(int)):
        x, y = int(np.clip(x, 0, s - 1)), int(np.clip(y, 0, s - 1))
        out[i, s - 1 - y : 2 * s - 1 - y, s - 1 - x : 2 * s - 1 - x] = maps[i]
    return out


def ring_profile(maps) -> np.ndarray:
    """(..., R) the mass of centred maps (..., 2S - 1, 2S - 1) in rings of integer radius ceil(distance)."""
    maps = np.asarray(maps, np.float64)
    side = maps.shape[-1]
    c = side // 2
    ys, xs = np.mgrid[0:side, 0:side]
    ring = np.ceil(np.hypot(xs - c, ys - c) - 1e-9).astype(int).ravel()
    flat = maps.reshape(-1, side * side)
    out = np.zeros((len(flat), ring.max() + 1))
    for i, row in enumerate(flat):
        out[i] = np.bincount(ring, weights=row, minlength=ring.max() + 1)
    return out.reshape(*maps.shape[:-2], -1)


def radius(profile, share: float) -> np.ndarray:
    """(...,) the smallest integer radius whose disc holds `share` of a ring profile's (..., R) mass."""
    profile = np.asarray(profile, np.float64)
    total = profile.sum(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        cumulative = np.cumsum(profile, axis=-1) / total
    reached = cumulative >= share - 1e-12
    return np.where(total[..., 0] > 0, reached.argmax(-1), np.nan).astype(np.float64)


def gradient_maps(outputs: torch.Tensor, inputs: torch.Tensor, units) -> np.ndarray:
    """(B, S, S) |d (sum over channels of outputs[b, :, y_b, x_b]) / d inputs[b]| summed over colour channels.
    outputs (B, C, r, r) computed from inputs (B, 3, S, S) sample by sample (eval mode: batch statistics do not
    mix samples); units (B, 2) int (x, y) cells of the output grid."""
    units = torch.as_tensor(np.asarray(units), dtype=torch.long)
    rows = torch.arange(len(units))
    picked = outputs[rows, :, units[:, 1], units[:, 0]].sum()
    (grad,) = torch.autograd.grad(picked, inputs, retain_graph=True)
    return grad.abs().sum(1).detach().float().cpu().numpy()


def normalised(maps) -> np.ndarray:
    """Each map (B, ...) divided by its sum (an all-zero map stays zero)."""
    maps = np.asarray(maps, np.float64)
    total = maps.reshape(len(maps), -1).sum(-1)
    return maps / np.where(total > 0, total, 1.0).reshape(-1, *([1] * (maps.ndim - 1)))


@dataclass
class ReceptiveFields:
    """Effective receptive fields of units named `names` (the 17 joints' heatmaps, then each stage)."""

    names: list[str]
    mean_maps: np.ndarray  # (M, 2S - 1, 2S - 1) mean normalised centred gradient magnitude
    profiles: np.ndarray  # (N, M, R) per-sample ring profiles (NaN where the joint is not labelled)
    theoretical: np.ndarray  # (M,) side of the theoretical receptive field, input pixels
    input_size: int
    uniform: np.ndarray | None = None  # (N, M, R) ring profiles of a map spread evenly over the crop, same centres

    def radii(self, share: float, rows=None, uniform: bool = False) -> np.ndarray:
        """(M,) the radius (input pixels) holding `share` of the mean map's mass, over samples `rows` (uniform:
        of the even map's: the radius a unit that weighs the whole crop alike would get)."""
        profiles = self.uniform if uniform else self.profiles
        profiles = profiles if rows is None else profiles[np.asarray(rows)]
        with np.errstate(invalid="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                return radius(np.nanmean(profiles, axis=0), share)

    def intervals(self, share: float, resamples: int = 500, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """95% percentile bootstrap intervals over samples of radii(share): (low (M,), high (M,))."""
        n = len(self.profiles)
        draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
        values = np.stack([self.radii(share, rows) for rows in draws])
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            low, high = np.nanpercentile(values, [2.5, 97.5], axis=0)
        return low, high

    def in_person_heights(self, pixels) -> np.ndarray:
        return np.asarray(pixels, np.float64) / (PERSON_SHARE * self.input_size)


def effective_receptive_fields(model, images, keypoints, visibility, stack: int = -1) -> ReceptiveFields:
    """ERF of every joint's heatmap and of every stage (stage_names plus "head") at the labelled keypoints of
    crops (N, 3, S, S) (keypoints (N, K, 2) heatmap coordinates). Per sample: one forward and one backward
    pass on a copy per labelled joint for the heatmaps; one forward pass on a copy per joint for up to
    STAGE_JOINTS of them and one backward pass per stage."""
    images = as_crops(images)
    config = model.config
    s, h, k = config.input_size, config.heatmap_size, len(KEYPOINT_NAMES)
    levels = hourglass_levels(model, stack)
    names = [*stage_names(len(levels)), "head"]
    labelled = counted_mask(visibility)
    keypoints = np.asarray(keypoints, np.float64)
    device = next(model.parameters()).device
    maps_sum = np.zeros((k + len(names), 2 * s - 1, 2 * s - 1))
    maps_count = np.zeros(k + len(names))
    profiles, uniform = [], []
    captured: dict[str, torch.Tensor] = {}

    def keep(name, first=False):
        def hook(module, args, output):
            captured[name] = output[0] if first else output
        return hook

    watched = [(model.stem_res3, keep("stem")), (levels[-1].inner, keep("bottleneck")),
               (model.heads[stack], keep("head", first=True))]
    for i, level in enumerate(levels, start=1):
        watched += [(level.low1, keep(f"down{i}")), (level, keep(f"up{i}"))]
    with evaluating(model), forward_hooks(watched):
        for n in range(len(images)):
            joints = np.flatnonzero(labelled[n])
            row = np.full((k + len(names), 2 * s), np.nan)
            uniform_row = row.copy()
            if len(joints):
                image = to_model_input(images[n : n + 1].to(device))
                shifted, flat = _joint_fields(model, image, joints, keypoints[n], stack)
                maps_sum[joints] += shifted
                maps_count[joints] += 1
                row[joints] = _pad(ring_profile(shifted), 2 * s)
                uniform_row[joints] = _pad(ring_profile(flat), 2 * s)
                # the stages at a few of the sample's joints, spread over them: a backward pass per stage each
                chosen = joints[np.unique(np.linspace(0, len(joints) - 1, STAGE_JOINTS).round().astype(int))]
                x = image.repeat(len(chosen), 1, 1, 1).requires_grad_(True)
                model(x)
                for u, name in enumerate(names, start=k):
                    shifted, flat = _unit_fields(captured[name], x, keypoints[n, chosen], h)
                    mean = shifted.mean(0)
                    maps_sum[u] += mean
                    maps_count[u] += 1
                    row[u] = _pad(ring_profile(mean), 2 * s)
                    uniform_row[u] = _pad(ring_profile(flat.mean(0)), 2 * s)
            profiles.append(row)
            uniform.append(uniform_row)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_maps = maps_sum / np.where(maps_count > 0, maps_count, np.nan)[:, None, None]
    rf = theoretical_rf(config, stack)
    theoretical = np.array([np.nan] * k + [rf[name] for name in names], np.float64)
    theoretical[:k] = rf["head"]  # a heatmap is one 1x1 convolution of the head's features
    return ReceptiveFields([*KEYPOINT_NAMES, *names], mean_maps, np.stack(profiles), theoretical, s,
                           np.stack(uniform))


def _unit_fields(outputs, x, points, heatmap_size: int, cells=None) -> np.ndarray:
    """(J, 2S - 1, 2S - 1) normalised centred input-gradient maps of the units of `outputs` (J, C, r, r) at the
    grid cells holding `points` (J, 2) heatmap coordinates (or at `cells` (J, 2)), and the same for a map spread
    evenly over the crop (the reference: what a unit that sees the whole crop alike would give)."""
    side, size = outputs.shape[-1], x.shape[-1]
    if cells is None:
        cells = np.clip(np.floor((np.asarray(points) + 0.5) * side / heatmap_size), 0, side - 1).astype(int)
    grads = normalised(gradient_maps(outputs, x, cells))
    centres = (cells + 0.5) * (size / side) - 0.5
    return centred(grads, centres), centred(np.full(grads.shape, 1.0 / size**2), centres)


def _joint_fields(model, image, joints, points, stack: int) -> np.ndarray:
    """_unit_fields of each labelled joint's heatmap unit at its keypoint: one forward, one backward pass."""
    h, k = model.config.heatmap_size, model.config.num_keypoints
    x = image.repeat(len(joints), 1, 1, 1).requires_grad_(True)
    heat = model(x, all_stacks=True)[:, stack]
    one_hot = torch.zeros(len(joints), k, 1, 1, device=x.device)
    one_hot[torch.arange(len(joints)), torch.as_tensor(joints)] = 1
    cells = np.clip(np.rint(points[joints]), 0, h - 1).astype(int)
    return _unit_fields(heat * one_hot, x, None, h, cells)


def _pad(profile, length: int) -> np.ndarray:
    out = np.zeros(profile.shape[:-1] + (length,))
    out[..., : profile.shape[-1]] = profile[..., :length]
    return out
