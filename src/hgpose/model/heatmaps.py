"""The heatmap codec, the model's language: what a target heatmap is (encode), how the loss compares
heatmaps, how a heatmap becomes a keypoint (decode: the quarter-pixel rule or DARK), and how the flip
test realigns a mirrored crop's heatmaps. The target sigma is defined here once; DARK uses the same.

**DARK** sub-pixel decoding (Zhang et al., "Distribution-Aware Coordinate Representation for Human
Pose Estimation", CVPR 2020): smooth the heatmap with a Gaussian of the training targets' sigma,
take its log, and move from the integer argmax by one Newton step of the Taylor expansion there:
offset = -Hessian^-1 x gradient (central differences). For a Gaussian peak the log is a quadratic,
so the step lands on the true maximum; the quarter-pixel rule can be off by up to a quarter pixel.

**The flip test** averages a crop's heatmaps with those of its mirror image, flipped back.

How a flipped heatmap is realigned, under hgpose's pixel convention (hgpose.data.transforms): input
and heatmap pixel j are centred at coordinate j, and heatmap pixel h covers input pixels 4h..4h+3,
so input u = 4(h + 0.5) - 0.5. Mirroring an S-pixel input maps u to S - 1 - u; with H = S / 4,

    S - 1 - u = S - 1 - 4(h + 0.5) + 0.5 = 4((H - 1 - h) + 0.5) - 0.5,

i.e. heatmap pixel h of the mirrored crop is heatmap pixel H - 1 - h of the original. So flipping the
heatmap array back (torch.flip on the last axis) realigns it exactly, with no sub-pixel or one-pixel
shift (code with a corner-based convention needs one). The mirror of a left joint is a right joint,
so the channels of each left/right pair are then swapped (keypoints.flip_permutation).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from hgpose.keypoints import flip_permutation
from hgpose.runtime.files import UserError

TARGET_SIGMA = 1.0  # heatmap pixels: 1 px from the peak a target is exp(-0.5), 2 px exp(-2)
DECODE_METHODS = ("quarter", "dark")
MAX_STEP = 1.0  # a DARK Newton step larger than this (a flat or odd peak) is clipped


# --- encode --------------------------------------------------------------------------------------


def render_heatmaps(keypoints: torch.Tensor, visibility: torch.Tensor, size: int, sigma: float = TARGET_SIGMA):
    """One unit-peak Gaussian per keypoint at its exact sub-pixel position.

    keypoints: (B, K, 2) heatmap pixel-centre coordinates (see hgpose.data.transforms);
    visibility: (B, K) COCO flags. A keypoint counts (weight 1) when v is 1 or 2 and it lies on the
    heatmap; otherwise its weight is 0 and its map is all zeros.
    Returns heatmaps (B, K, size, size) float32 and weights (B, K) float32.
    """
    keypoints = keypoints.float()
    grid = torch.arange(size, device=keypoints.device, dtype=torch.float32)
    x, y = keypoints[..., 0], keypoints[..., 1]
    inside = (x >= -0.5) & (x < size - 0.5) & (y >= -0.5) & (y < size - 0.5)
    weights = ((visibility > 0) & inside).float()
    gx = torch.exp(-((grid - x[..., None]) ** 2) / (2 * sigma**2))  # (B, K, W)
    gy = torch.exp(-((grid - y[..., None]) ** 2) / (2 * sigma**2))  # (B, K, H)
    heatmaps = gy[..., :, None] * gx[..., None, :] * weights[..., None, None]
    return heatmaps, weights


def heatmap_loss(predicted: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """The seed's loss: MSE, the mean over every heatmap element, computed in fp32.

    predicted: (B, K, H, W) or (B, S, K, H, W) for S stacks (intermediate supervision: each stack is
    compared with the same target and the stack losses averaged). `valid` (B,) drops samples whose
    image could not be read; with none valid the loss is 0 (and still a graph for backward).
    """
    predicted = predicted.float()
    if predicted.dim() == 5:
        target = target.unsqueeze(1).expand_as(predicted)
    squared = (predicted - target) ** 2
    if valid is None:
        return squared.mean()
    mask = valid.to(squared.dtype).view(-1, *([1] * (squared.dim() - 1)))
    per_sample_elements = squared[0].numel()
    return (squared * mask).sum() / (mask.sum().clamp(min=1) * per_sample_elements)


# --- decode --------------------------------------------------------------------------------------


def check_decode_method(method: str) -> str:
    if method not in DECODE_METHODS:
        raise UserError(f"--decode must be one of {', '.join(DECODE_METHODS)}, got {method!r}")
    return method


def decode_heatmaps(heatmaps: torch.Tensor, method: str = "quarter") -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K, H, W) heatmaps -> coords (N, K, 2) float32 (x, y) in heatmap pixel-centre coordinates
    and confidence (N, K) = the heatmap maximum.

    Argmax, then "quarter": a quarter pixel toward the larger neighbour in x and in y where both
    neighbours exist (no shift when they are equal), or "dark": the Taylor step of DARK on the
    smoothed log heatmap (dark_offsets below). Runs on the tensor's device with no host sync.
    """
    check_decode_method(method)
    heatmaps = heatmaps.float()
    n, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(n, k, h * w)  # reshape, not view: channels-last outputs are not contiguous
    confidence, index = flat.max(dim=-1)
    x, y = index % w, torch.div(index, w, rounding_mode="floor")

    def value_at(dx: int, dy: int) -> torch.Tensor:
        at = (y + dy).clamp(0, h - 1) * w + (x + dx).clamp(0, w - 1)
        return flat.gather(-1, at.unsqueeze(-1)).squeeze(-1)

    if method == "dark":
        return torch.stack([x, y], dim=-1).float() + dark_offsets(heatmaps, x, y), confidence
    inner_x = (x > 0) & (x < w - 1)
    inner_y = (y > 0) & (y < h - 1)
    shift_x = torch.sign(value_at(1, 0) - value_at(-1, 0)) * inner_x
    shift_y = torch.sign(value_at(0, 1) - value_at(0, -1)) * inner_y
    coords = torch.stack([x + 0.25 * shift_x, y + 0.25 * shift_y], dim=-1).float()
    return coords, confidence


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


# --- the flip test -------------------------------------------------------------------------------


def flip_back(heatmaps: torch.Tensor) -> torch.Tensor:
    """Heatmaps (N, K, H, W) of mirrored crops -> aligned with the original crops: mirrored in x and
    left/right channels swapped."""
    return heatmaps.flip(-1)[:, flip_permutation(heatmaps.shape[1])]


def flip_test(model, images: torch.Tensor) -> torch.Tensor:
    """(model(x) + flip_back(model(mirror(x)))) / 2 for a batch of model inputs (N, 3, S, S); one
    forward pass over both halves (batch norm is in eval mode, so samples do not interact)."""
    n = len(images)
    both = torch.cat([images, images.flip(-1)])
    if images.dim() == 4 and images.is_contiguous(memory_format=torch.channels_last) and images.shape[1] > 1:
        both = both.contiguous(memory_format=torch.channels_last)  # keep the layout the caller chose
    heatmaps = model(both).float()
    return (heatmaps[:n] + flip_back(heatmaps[n:])) / 2
