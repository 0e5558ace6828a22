"""The seed's stacked-hourglass network (Newell et al. 2016, with Olsen's BN/ReLU placement).

Defaults are the seed's model: one hourglass with 4 down/upsamples, one pre-activation residual
between each, 3 residuals at the 4x4 bottleneck, 256 features, 17 keypoints, 256x256 input and
64x64 heatmaps: 3,426,705 parameters.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import safe_open, save_file
from torch import nn

from hgpose.runtime.files import UserError, atomic_path

CONFIG_METADATA_KEY = "hgpose_model_config"


@dataclass(frozen=True)
class ModelConfig:
    num_stacks: int = 1
    depth: int = 4  # number of down/upsamples in each hourglass
    residuals_per_level: int = 1  # residuals between each down- and upsample
    bottleneck_residuals: int = 3  # residuals at the lowest resolution, the pooling neighbours included
    features: int = 256
    num_keypoints: int = 17
    input_size: int = 256  # square input; heatmaps are input_size / 4

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
        if self.input_size % 4:
            raise ValueError(f"ModelConfig.input_size must be divisible by 4 (the stem downsamples x4), "
                             f"got {self.input_size}")
        if self.heatmap_size % (2**self.depth):
            raise ValueError(
                f"ModelConfig.input_size={self.input_size} gives {self.heatmap_size}x{self.heatmap_size} heatmaps, "
                f"which {self.depth} halvings (ModelConfig.depth) cannot divide evenly; use an input_size "
                f"divisible by {4 * 2**self.depth} or a smaller depth"
            )

    @property
    def heatmap_size(self) -> int:
        return self.input_size // 4

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


# --- weights on disk: safetensors with the ModelConfig as JSON in the header, never a pickle ---


def save_model(model: HourglassNet, path: str | Path, extra_metadata: dict[str, str] | None = None) -> Path:
    path = Path(path)
    module = getattr(model, "module", model)  # unwrap DDP
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    metadata = {CONFIG_METADATA_KEY: module.config.to_json(), **(extra_metadata or {})}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return path


# Upper bounds on a model config: far beyond any useful hourglass, but they keep a hostile checkpoint
# header (or a typo on the command line) from making hgpose build a huge model.
CHECKPOINT_CONFIG_LIMITS = {"num_stacks": 16, "depth": 8, "residuals_per_level": 16, "bottleneck_residuals": 64,
                            "features": 4096, "num_keypoints": 1024, "input_size": 4096}


def beyond_limits(values: dict) -> str | None:
    """'features=100000, ...' for the model-config values over CHECKPOINT_CONFIG_LIMITS, else None."""
    too_large = [f"{k}={v}" for k, v in values.items() if isinstance(v, int) and v > CHECKPOINT_CONFIG_LIMITS.get(k, v)]
    return f"{', '.join(too_large)} beyond the limits {CHECKPOINT_CONFIG_LIMITS}" if too_large else None


def read_model_config(path: str | Path) -> ModelConfig:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as exc:  # safetensors raises several error types for a bad header
        raise UserError(f"{path}: not a safetensors checkpoint ({exc})") from None
    if CONFIG_METADATA_KEY not in metadata:
        raise UserError(f"{path}: safetensors file has no hgpose model config; not an hgpose checkpoint")
    try:
        values = json.loads(metadata[CONFIG_METADATA_KEY])
        if not isinstance(values, dict):
            raise ValueError("not a JSON object")
        if beyond_limits(values):
            raise ValueError(beyond_limits(values))
        return ModelConfig.from_dict(values)
    except (ValueError, TypeError) as exc:
        raise UserError(f"{path}: bad model config in checkpoint: {exc}") from None


def expected_tensor_shapes(config: ModelConfig) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """The state-dict names, shapes and dtypes of a model, computed without allocating it (meta device)."""
    with torch.device("meta"):
        model = HourglassNet(config)
    return {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}


_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64}


def check_tensor_shapes(path: str | Path, config: ModelConfig) -> None:
    """Compare a checkpoint's header (names, shapes, dtypes) with what `config` builds, before any
    tensor is read: a wrong or hostile file is a one-line error, never a large allocation."""
    path = Path(path)
    expected = expected_tensor_shapes(config)
    try:
        with safe_open(str(path), framework="pt") as f:
            found = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    except Exception as exc:
        raise UserError(f"{path}: not a readable safetensors checkpoint ({exc})") from None
    missing = sorted(set(expected) - set(found))
    if missing:
        raise UserError(f"{path}: checkpoint lacks {len(missing)} model tensors (e.g. {missing[0]})")
    for name, (shape, dtype) in expected.items():
        found_shape, found_dtype = found[name]
        if found_shape != shape or _SAFETENSORS_DTYPES.get(found_dtype) != dtype:
            raise UserError(f"{path}: tensor {name} is {found_dtype} {list(found_shape)}, the model config "
                            f"{config} needs {str(dtype).removeprefix('torch.')} {list(shape)}")


def load_model(path: str | Path, expected_config: ModelConfig | None = None, device="cpu") -> HourglassNet:
    """Load a checkpoint written by save_model (or a training checkpoint's weights file)."""
    config = read_model_config(path)
    if expected_config is not None and config != expected_config:
        raise UserError(f"{path}: checkpoint model config {config} does not match the expected {expected_config}")
    check_tensor_shapes(path, config)
    model = HourglassNet(config)
    with safe_open(str(path), framework="pt") as f:  # the model's tensors only (training files hold more)
        state = {k: f.get_tensor(k) for k in model.state_dict()}
    model.load_state_dict(state)
    return model.to(device).eval()
