"""The graph `hgpose export` writes by default: uint8 crops in, keypoints in crop pixels out.

A bare network's ONNX file leaves the user to rebuild the input scaling and the decoding, and a
naive argmax on the heatmaps lands joints a quarter heatmap pixel (a full input pixel at 4x) or more
from `hgpose predict`. This module wraps HourglassNet with exactly predict's steps (hgpose.predict.
Predictor.predict_crops): uint8 / 255, the optional flip test (hgpose.model.heatmaps), decode_heatmaps
("quarter" or "dark", hgpose.model.heatmaps), and the map from heatmap pixel centres to crop
pixels, so that onnxruntime gives predict's keypoints for the same crop.

Crop pixel coordinates are continuous, as COCO's image coordinates: pixel i covers [i, i + 1). For a
crop of the square (x0, y0, side) of an image, image = crop * side / S + (x0, y0).
"""

from __future__ import annotations

import torch
from torch import nn

from hgpose.model.heatmaps import DECODE_METHODS, decode_heatmaps, flip_back
from hgpose.model.hourglass import HourglassNet
from hgpose.runtime.files import UserError

GRAPHS = ("keypoints", "heatmaps")
CROP_INPUT = "crop"
KEYPOINTS_OUTPUT, HEATMAPS_OUTPUT = "keypoints", "heatmaps"
CROP_DESCRIPTION = ("uint8 RGB crops (N, S, S, 3), channels last as images are stored; the square "
                    "1.25 x the person box's longer side, centred on it, warped bilinearly to S x S; N dynamic")
KEYPOINTS_DESCRIPTION = ("keypoints (N, K, 3): x, y in crop pixels (pixel i covers [i, i+1); image = crop * "
                         "side / S + (x0, y0)) and confidence (the heatmap peak); heatmaps (N, K, S/4, S/4)")


def heatmaps_to_crop_pixels(coords: torch.Tensor, input_size: int, heatmap_size: int) -> torch.Tensor:
    """Heatmap pixel-centre coordinates -> continuous crop pixel coordinates (hgpose.data.transforms:
    heatmap pixel h covers input pixels 4h .. 4h+3, whose outer edges are 4h and 4h + 4)."""
    return (coords + 0.5) * (input_size / heatmap_size)


class CropKeypoints(nn.Module):
    """HourglassNet + predict's decoding: crops (N, S, S, 3) uint8 -> (keypoints (N, K, 3), heatmaps)."""

    def __init__(self, model: HourglassNet, decode: str = "quarter", flip: bool = False):
        super().__init__()
        if decode not in DECODE_METHODS:
            raise UserError(f"--decode must be one of {', '.join(DECODE_METHODS)}, got {decode!r}")
        self.model, self.decode, self.flip = model, decode, flip
        self.config = model.config

    def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = crops.permute(0, 3, 1, 2).float() / 255.0  # hgpose.model.to_model_input, from NHWC
        heatmaps = self.model(images).float()
        if self.flip:  # hgpose.model.heatmaps.flip_test, as two passes: no batch-size arithmetic in the graph
            heatmaps = (heatmaps + flip_back(self.model(images.flip(-1)).float())) / 2
        coords, confidence = decode_heatmaps(heatmaps, self.decode)
        xy = heatmaps_to_crop_pixels(coords, self.config.input_size, self.config.heatmap_size)
        return torch.cat([xy, confidence.unsqueeze(-1)], dim=-1), heatmaps


def io_names(graph: nn.Module) -> tuple[list[str], list[str]]:
    """(input names, output names) of the exported graph."""
    if isinstance(graph, CropKeypoints):
        return [CROP_INPUT], [KEYPOINTS_OUTPUT, HEATMAPS_OUTPUT]
    return ["image"], [HEATMAPS_OUTPUT]


def example_input(graph: nn.Module, batch: int, seed: int) -> torch.Tensor:
    """A random input of the graph's kind: uint8 NHWC crops, or float NCHW in [0, 1] for the bare network."""
    size = graph.config.input_size
    generator = torch.Generator().manual_seed(seed)
    if isinstance(graph, CropKeypoints):
        return torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, generator=generator)
    return torch.rand(batch, 3, size, size, generator=generator)
