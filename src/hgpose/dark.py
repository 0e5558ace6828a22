"""DARK sub-pixel decoding (Zhang et al., "Distribution-Aware Coordinate Representation for Human
Pose Estimation", CVPR 2020): smooth the heatmap with a Gaussian of the training targets' sigma,
take its log, and move from the integer argmax by one Newton step of the Taylor expansion there:
offset = -Hessian^-1 x gradient (central differences). For a Gaussian peak the log is a quadratic,
so the step lands on the true maximum; the quarter-pixel rule can be off by up to a quarter pixel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

TARGET_SIGMA = 1.0  # hgpose.data.targets renders sigma = 1 heatmap pixel
MAX_STEP = 1.0  # a Newton step larger than this (a flat or odd peak) is clipped


def gaussian_blur(heatmaps: torch.Tensor, sigma: float = TARGET_SIGMA) -> torch.Tensor:
    """Depthwise Gaussian blur of (N, K, H, W), kernel 2 * ceil(3 sigma) + 1, mirrored borders (as
    OpenCV's default), rescaled so that each map keeps its maximum."""
    radius = math.ceil(3 * sigma)
    grid = torch.arange(-radius, radius + 1, device=heatmaps.device, dtype=heatmaps.dtype)
    kernel = torch.exp(-(grid**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    n, k, h, w = heatmaps.shape
    maps = heatmaps.reshape(n * k, 1, h, w)
    pad_x, pad_y = min(radius, w - 1), min(radius, h - 1)
    maps = F.pad(maps, (pad_x, pad_x, pad_y, pad_y), mode="reflect")
    blurred = F.conv2d(maps, kernel.view(1, 1, 1, -1)[..., radius - pad_x : radius + pad_x + 1])
    blurred = F.conv2d(blurred, kernel.view(1, 1, -1, 1)[..., radius - pad_y : radius + pad_y + 1, :])
    blurred = blurred.reshape(n, k, h, w)
    peak = heatmaps.amax(dim=(2, 3), keepdim=True)
    return blurred * (peak / blurred.amax(dim=(2, 3), keepdim=True).clamp(min=1e-12))


def dark_offsets(heatmaps: torch.Tensor, x: torch.Tensor, y: torch.Tensor, sigma: float = TARGET_SIGMA):
    """Sub-pixel offsets (N, K, 2) to add to the integer argmax (x, y) (N, K); zero at the border,
    where the Hessian is not negative definite, or for an all-zero map."""
    n, k, h, w = heatmaps.shape
    logs = gaussian_blur(heatmaps.float(), sigma).clamp(min=1e-10).log().reshape(n, k, h * w)

    def at(dx: int, dy: int) -> torch.Tensor:
        index = (y + dy).clamp(0, h - 1) * w + (x + dx).clamp(0, w - 1)
        return logs.gather(-1, index.unsqueeze(-1)).squeeze(-1)

    centre = at(0, 0)
    gx, gy = 0.5 * (at(1, 0) - at(-1, 0)), 0.5 * (at(0, 1) - at(0, -1))
    hxx = at(1, 0) - 2 * centre + at(-1, 0)
    hyy = at(0, 1) - 2 * centre + at(0, -1)
    hxy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1))
    det = hxx * hyy - hxy**2
    usable = (x > 0) & (x < w - 1) & (y > 0) & (y < h - 1) & (det > 1e-12) & (hxx < 0)
    safe_det = torch.where(usable, det, torch.ones_like(det))
    step_x = -(hyy * gx - hxy * gy) / safe_det
    step_y = -(hxx * gy - hxy * gx) / safe_det
    offsets = torch.stack([step_x, step_y], dim=-1).clamp(-MAX_STEP, MAX_STEP)
    return offsets * usable.unsqueeze(-1)
