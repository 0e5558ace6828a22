"""Attributions that are checked: Integrated Gradients per joint (Captum) next to the plain input gradient,
the model-randomisation sanity check (Adebayo et al. 2018) and deletion curves.

The attributed output is a joint's heatmap peak (its confidence). Maps are (N, J, S, S): the absolute
attribution summed over the three colour channels for IG, the largest absolute gradient over the
channels for the input gradient (hgpose.explore.saliency, unchanged).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from hgpose.explore.analyses import as_crops, evaluating, in_batches, model_device, saliency
from hgpose.model.hourglass import HourglassNet, build_model, to_model_input

IG_STEPS = 32
BASELINE_GREY = 0.5  # the IG baseline and the deletion fill: mid grey, as the occlusion patch
DELETION_FRACTIONS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)


class _Peaks(torch.nn.Module):
    """(B, 3, S, S) float input -> (B, K) heatmap peaks: what Captum attributes."""

    def __init__(self, model: HourglassNet):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).flatten(2).amax(dim=-1)


def integrated_gradients(model: HourglassNet, images, joints: Sequence[int], steps: int = IG_STEPS,
                         baseline: float = BASELINE_GREY, batch_size: int = 4) -> np.ndarray:
    """|Integrated Gradients| of each joint's heatmap peak from a uniform grey image to the crop, summed
    over colour channels (Captum, Riemann-trapezoid rule with `steps` points): (N, J, S, S) float32.
    Costs steps forward and backward passes per joint and sample."""
    from captum.attr import IntegratedGradients

    images, device = as_crops(images), model_device(model)
    method = IntegratedGradients(_Peaks(model))
    out = []
    with evaluating(model):
        for _, batch in in_batches(images, batch_size):
            x = to_model_input(batch.to(device))
            maps = [method.attribute(x, baselines=baseline, target=int(j), n_steps=steps,
                                     internal_batch_size=max(steps, 8)).abs().sum(dim=1).detach().cpu()
                    for j in joints]
            out.append(torch.stack(maps, dim=1))
    return torch.cat(out).numpy().astype(np.float32)


def input_gradient(model: HourglassNet, images, joints: Sequence[int], batch_size: int = 8) -> np.ndarray:
    """Today's saliency (the largest |d peak / d pixel| over colour channels): (N, J, S, S)."""
    return saliency(model, images, list(joints), batch_size=batch_size)


def randomised_copy(model: HourglassNet, seed: int = 12345) -> HourglassNet:
    """The same architecture with freshly initialised weights (the seed's init), on the same device."""
    return build_model(model.config, seed=seed).to(model_device(model)).eval()


def rank_correlation(a, b) -> float:
    """Spearman rank correlation of two maps (any shape, flattened)."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


@dataclass
class RandomisationCheck:
    """Rank correlation between the map of the trained model and of a randomised one, per sample and joint.
    A map that explains the model must change when the weights are randomised: near 0 passes, near 1
    fails (the map then reflects the input, e.g. its edges, not what the model learned)."""

    integrated_gradients: np.ndarray  # (N, J)
    input_gradient: np.ndarray  # (N, J)
    random_maps_ig: np.ndarray  # (N, J, S, S) the randomised model's IG maps (for the figure)
    random_maps_gradient: np.ndarray  # (N, J, S, S)


def randomisation_check(model: HourglassNet, images, joints: Sequence[int], ig_maps, gradient_maps,
                        steps: int = IG_STEPS, seed: int = 12345) -> RandomisationCheck:
    """Compare the trained model's maps (N, J, S, S) with those of a randomised copy of it (Adebayo et al.
    2018, full randomisation of every weight)."""
    randomised = randomised_copy(model, seed)
    random_ig = integrated_gradients(randomised, images, joints, steps)
    random_gradient = input_gradient(randomised, images, joints)
    return RandomisationCheck(map_correlations(ig_maps, random_ig), map_correlations(gradient_maps, random_gradient),
                              random_ig, random_gradient)


def map_correlations(a, b) -> np.ndarray:
    """(N, J) rank correlation of each pair of maps a[n, j], b[n, j] ((N, J, S, S) each)."""
    return np.array([[rank_correlation(x, y) for x, y in zip(xs, ys)] for xs, ys in zip(a, b)]).reshape(
        np.shape(a)[:2])


@torch.no_grad()
def deletion_curve(model: HourglassNet, images, joints: Sequence[int], maps, fractions=DELETION_FRACTIONS,
                   fill: int = 128, seed: int = 0, batch_size: int = 16) -> np.ndarray:
    """Confidence of joint joints[j] of each crop as the most attributed pixels of maps[n, j] (N, J, S, S)
    are replaced by grey first, at each fraction of the crop's pixels; maps None: a seeded random order.
    Returns (N, J, F). A faithful attribution makes the confidence fall fastest (lowest area)."""
    images, device = as_crops(images), model_device(model)
    n, size = len(images), images.shape[-1]
    pixels = size * size
    rng = np.random.default_rng(seed)
    counts = [int(round(f * pixels)) for f in fractions]
    curves = np.zeros((n, len(joints), len(fractions)), np.float32)
    with evaluating(model):
        for s in range(n):
            for c, joint in enumerate(joints):
                if maps is None:
                    order = rng.permutation(pixels)
                else:  # stable: ties (e.g. zero attribution) keep raster order, as in random they do not
                    order = np.argsort(-np.asarray(maps[s, c], np.float64).ravel(), kind="stable")
                variants = images[s].repeat(len(counts), 1, 1, 1).reshape(len(counts), 3, pixels)
                for v, count in enumerate(counts):
                    variants[v, :, torch.as_tensor(order[:count])] = fill
                variants = variants.reshape(len(counts), 3, size, size)
                peaks = []
                for _, batch in in_batches(variants, batch_size):
                    peaks.append(model(to_model_input(batch.to(device)))[:, joint].flatten(1).amax(-1).float().cpu())
                curves[s, c] = torch.cat(peaks).numpy()
    return curves


def deletion_area(curves, fractions=DELETION_FRACTIONS) -> np.ndarray:
    """Area under each deletion curve (..., F) over the fraction axis, divided by the largest fraction:
    the mean confidence while pixels are removed (trapezoid rule)."""
    fractions = np.asarray(fractions, np.float64)
    curves = np.asarray(curves, np.float64)
    widths = np.diff(fractions)
    return ((curves[..., 1:] + curves[..., :-1]) / 2 * widths).sum(axis=-1) / (fractions[-1] - fractions[0])
