"""Gaussian heatmap targets, rendered on the training device from keypoint coordinates."""

from __future__ import annotations

import torch


def render_heatmaps(keypoints: torch.Tensor, visibility: torch.Tensor, size: int, sigma: float = 1.0):
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
