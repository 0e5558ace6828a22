"""The seed's stacked-hourglass network (Newell et al. 2016, with Olsen's BN/ReLU placement).

Defaults are the seed's model: one hourglass with 4 down/upsamples, one pre-activation residual
between each, 3 residuals at the 4x4 bottleneck, 256 features, 17 keypoints, 256x256 input and
64x64 heatmaps: 3,426,705 parameters.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from hgpose.geometry import HEATMAP_STRIDE


@dataclass(frozen=True)
class ModelConfig:
    num_stacks: int = 1
    depth: int = 4  # number of down/upsamples in each hourglass
    residuals_per_level: int = 1  # residuals between each down- and upsample
    bottleneck_residuals: int = 3  # residuals at the lowest resolution, the pooling neighbours included
    features: int = 256
    num_keypoints: int = 17
    input_size: int = 256  # square input; heatmaps are input_size / HEATMAP_STRIDE

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"ModelConfig.{f.name} must be an int, got {value!r}")
        for name in ("num_stacks", "depth", "residuals_per_level", "features", "num_keypoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"ModelConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.features % 2:
            raise ValueError(f"ModelConfig.features must be even (residuals halve it), got {self.features}")
        if self.bottleneck_residuals < 2 * self.residuals_per_level + 1:
            raise ValueError(
                "ModelConfig.bottleneck_residuals must be >= 2 * residuals_per_level + 1 (the residuals "
                "before and after the innermost pooling count as part of the bottleneck), "
                f"got {self.bottleneck_residuals} with residuals_per_level={self.residuals_per_level}"
            )
        if self.input_size % HEATMAP_STRIDE:
            raise ValueError(f"ModelConfig.input_size must be divisible by {HEATMAP_STRIDE} (the stem downsamples "
                             f"x{HEATMAP_STRIDE}), got {self.input_size}")
        if self.heatmap_size % (2**self.depth):
            raise ValueError(
                f"ModelConfig.input_size={self.input_size} gives {self.heatmap_size}x{self.heatmap_size} heatmaps, "
                f"which {self.depth} halvings (ModelConfig.depth) cannot divide evenly; use an input_size "
                f"divisible by {HEATMAP_STRIDE * 2**self.depth} or a smaller depth"
            )

    @property
    def heatmap_size(self) -> int:
        return self.input_size // HEATMAP_STRIDE

    @property
    def innermost_residuals(self) -> int:
        return self.bottleneck_residuals - 2 * self.residuals_per_level

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s): {', '.join(unknown)}")
        return cls(**data)


class Residual(nn.Module):
    """Pre-activation bottleneck residual: (BN-ReLU-conv) x3 plus a skip (1x1 conv only when needed)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = out_channels // 2
        self.bn1, self.conv1 = nn.BatchNorm2d(in_channels), nn.Conv2d(in_channels, mid, 1)
        self.bn2, self.conv2 = nn.BatchNorm2d(mid), nn.Conv2d(mid, mid, 3, padding=1)
        self.bn3, self.conv3 = nn.BatchNorm2d(mid), nn.Conv2d(mid, out_channels, 1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x):
        out = self.conv1(F.relu(self.bn1(x), inplace=True))
        out = self.conv2(F.relu(self.bn2(out), inplace=True))
        out = self.conv3(F.relu(self.bn3(out), inplace=True))
        return out + (x if self.skip is None else self.skip(x))


def _residuals(n: int, channels: int) -> nn.Sequential:
    return nn.Sequential(*[Residual(channels, channels) for _ in range(n)])


class Hourglass(nn.Module):
    """One level of the hourglass; `inner` is the next level down, or the innermost residuals.

    output = skip(x) + upsample(low3(inner(low1(maxpool(x)))))

    `ablate` ("skip" or "low") zeroes one branch, for lesion studies in hgpose.explore.
    """

    def __init__(self, depth: int, features: int, residuals_per_level: int, innermost_residuals: int):
        super().__init__()
        self.depth = depth
        self.skip = _residuals(residuals_per_level, features)
        self.low1 = _residuals(residuals_per_level, features)
        if depth > 1:
            self.inner = Hourglass(depth - 1, features, residuals_per_level, innermost_residuals)
        else:
            self.inner = _residuals(innermost_residuals, features)
        self.low3 = _residuals(residuals_per_level, features)
        self.ablate: str | None = None

    def forward(self, x):
        skip = self.skip(x)
        low = self.low3(self.inner(self.low1(F.max_pool2d(x, 2, 2))))
        low = F.interpolate(low, scale_factor=2, mode="nearest")
        if self.ablate == "skip":
            skip = torch.zeros_like(skip)
        elif self.ablate == "low":
            low = torch.zeros_like(low)
        return skip + low

    def levels(self) -> list[Hourglass]:
        """This level and all below it, outermost first."""
        return [self] + (self.inner.levels() if isinstance(self.inner, Hourglass) else [])


class Head(nn.Module):
    """After each hourglass: residual, conv1x1-BN-ReLU (the network's last BN), conv1x1 to heatmaps."""

    def __init__(self, features: int, num_keypoints: int):
        super().__init__()
        self.residual = Residual(features, features)
        self.conv = nn.Conv2d(features, features, 1)
        self.bn = nn.BatchNorm2d(features)
        self.out = nn.Conv2d(features, num_keypoints, 1)

    def forward(self, x):
        features = F.relu(self.bn(self.conv(self.residual(x))), inplace=True)
        return features, self.out(features)


class HourglassNet(nn.Module):
    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        self.config = config = config or ModelConfig()
        f = config.features
        # stem: 256x256 -> 64x64
        self.stem_conv = nn.Conv2d(3, 64, 7, stride=2, padding=3)
        self.stem_bn = nn.BatchNorm2d(64)
        self.stem_res1 = Residual(64, 128)
        self.stem_res2 = Residual(128, 128)
        self.stem_res3 = Residual(128, f)
        inner = config.innermost_residuals
        self.hourglasses = nn.ModuleList(
            Hourglass(config.depth, f, config.residuals_per_level, inner) for _ in range(config.num_stacks)
        )
        self.heads = nn.ModuleList(Head(f, config.num_keypoints) for _ in range(config.num_stacks))
        # Newell's intermediate supervision: features and predictions merged back into the next stack
        self.merge_features = nn.ModuleList(nn.Conv2d(f, f, 1) for _ in range(config.num_stacks - 1))
        self.merge_preds = nn.ModuleList(nn.Conv2d(config.num_keypoints, f, 1) for _ in range(config.num_stacks - 1))
        init_weights(self)

    def stem(self, x):
        x = F.relu(self.stem_bn(self.stem_conv(x)), inplace=True)
        x = self.stem_res1(x)
        x = F.max_pool2d(x, 2, 2)
        return self.stem_res3(self.stem_res2(x))

    def forward_stacks(self, x) -> list[torch.Tensor]:
        """Heatmaps of every stack, first to last, each (N, K, H/4, W/4)."""
        x = self.stem(x)
        outputs = []
        for i, (hourglass, head) in enumerate(zip(self.hourglasses, self.heads)):
            features, heatmaps = head(hourglass(x))
            outputs.append(heatmaps)
            if i < len(self.merge_features):
                x = x + self.merge_features[i](features) + self.merge_preds[i](heatmaps)
        return outputs

    def forward(self, x, all_stacks: bool = False):
        """Heatmaps of the last stack, (N, K, H/4, W/4); with all_stacks, every stack's, (N, S, K, H/4, W/4).

        Training asks for all stacks through forward (not forward_stacks) so that a DDP wrapper sees it.
        """
        outputs = self.forward_stacks(x)
        if not all_stacks:
            return outputs[-1]
        return outputs[0].unsqueeze(1) if len(outputs) == 1 else torch.stack(outputs, dim=1)


def init_weights(model: nn.Module) -> None:
    """The seed's init: every conv weight ~ N(0, 2/(fan_in+fan_out)) (receptive field in the fans)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def build_model(config: ModelConfig | None = None, seed: int = 0) -> HourglassNet:
    """A freshly initialised model; the same seed gives the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return HourglassNet(config)


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 RGB images (N, 3, H, W) to the network's input: float in [0, 1], no mean/std shift."""
    return images.float().div_(255.0)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
