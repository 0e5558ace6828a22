"""Optional training augmentation, batched on the training device: flip, rotation, scale, half-body.

Each sample's parameters come from its own torch.Generator seeded by (seed, epoch, dataset index), so
a resumed run draws exactly what the uninterrupted one drew, and under torchrun every rank draws
different but reproducible transforms (ranks see different samples). No global RNG is touched.

One forward affine matrix per sample, in grid_sample's normalised coordinates with
align_corners=False: -1 and +1 are the outer edges of the border pixels, so pixel j's centre sits at
(2j + 1) / S - 1. Input pixel-centre u and heatmap pixel-centre h = (u + 0.5) / 4 - 0.5 land on the
same normalised coordinate (see hgpose.data.transforms), so the same matrix moves the pixels (its
inverse feeds affine_grid + grid_sample, one call per batch) and the keypoints (applied directly).

The warp works on the cached crop itself: where a zoom-out or a rotation reaches past the crop, the
pixels are zeros (the crop holds no more context).
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F

from hgpose.keypoints import flip_permutation
from hgpose.runtime.files import UserError
from hgpose.runtime.seeds import epoch_seed

UPPER_BODY_JOINTS = 11  # COCO's first 11: nose .. wrists; the rest: hips .. ankles
HALF_BODY_PADDING = 1.5  # the half-body crop side = 1.5 x the chosen joints' extent (as in HRNet)
HALF_BODY_MAX_ZOOM = 2.0  # beyond this a 256 px cached crop is upsampled too far to be worth it


@dataclass
class AugmentConfig:
    """The `augment:` block of a run's config.yaml; off by default (the seed's protocol)."""

    enabled: bool = False
    flip: float = 0.5  # probability of a horizontal flip (left/right joints swapped)
    rotate: float = 30.0  # rotation drawn uniformly in +-rotate degrees ...
    rotate_p: float = 0.4  # ... applied with this probability
    scale_min: float = 0.75  # the person is drawn this many times as large: uniform in [min, max]
    scale_max: float = 1.25
    half_body: float = 0.0  # probability of zooming onto the upper or the lower body's joints

    def __post_init__(self):
        for name in ("flip", "rotate_p", "half_body"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise UserError(f"augment: {name} must be a probability in [0, 1], got {value}")
        if not 0 <= self.rotate <= 180:
            raise UserError(f"augment: rotate must be in [0, 180] degrees, got {self.rotate}")
        if not 0 < self.scale_min <= self.scale_max:
            raise UserError(f"augment: scale must be LO,HI with 0 < LO <= HI, got {self.scale_min},{self.scale_max}")

    @classmethod
    def from_dict(cls, values: dict, source="augment") -> AugmentConfig:
        if not isinstance(values, dict):
            raise UserError(f"{source}: augment must be a mapping of {', '.join(f.name for f in fields(cls))}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise UserError(f"{source}: unknown augment option(s) {', '.join(unknown)} (known: {', '.join(known)})")
        for key, value in values.items():
            expected = (bool,) if key == "enabled" else (int, float)
            if not isinstance(value, expected) or (key != "enabled" and isinstance(value, bool)):
                raise UserError(f"{source}: augment.{key} must be {expected[-1].__name__}, got {value!r}")
        try:
            return cls(**{k: (v if k == "enabled" else float(v)) for k, v in values.items()})
        except UserError as exc:
            raise UserError(f"{source}: {exc}" if source != "augment" else str(exc)) from None

    def describe(self) -> str:
        if not self.enabled:
            return "augmentation off"
        return (f"augmentation flip {self.flip:g}, rotate +-{self.rotate:g} deg p {self.rotate_p:g}, "
                f"scale {self.scale_min:g}-{self.scale_max:g}, half-body {self.half_body:g}")

    def to_dict(self) -> dict:
        return asdict(self)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    # a large odd multiplier keeps (epoch, index) pairs apart for any realistic dataset size
    return (epoch_seed(seed, epoch) * 6_364_136_223_846_793_005 + int(index) + 1) % (1 << 63)


def draw_uniforms(seed: int, epoch: int, indices) -> torch.Tensor:
    """(B, 6) uniforms in [0, 1), row i a function of (seed, epoch, indices[i]) alone."""
    rows = [torch.rand(6, generator=torch.Generator().manual_seed(sample_seed(seed, epoch, i)))
            for i in torch.as_tensor(indices).tolist()]
    return torch.stack(rows) if rows else torch.empty(0, 6)


def to_normalised(points: torch.Tensor, size: int) -> torch.Tensor:
    """Pixel-centre coordinates of a size x size frame to grid_sample's (align_corners=False)."""
    return (2 * points + 1) / size - 1


def from_normalised(points: torch.Tensor, size: int) -> torch.Tensor:
    return ((points + 1) * size - 1) / 2


def forward_matrices(config: AugmentConfig, uniforms: torch.Tensor, keypoints: torch.Tensor | None = None,
                     visibility: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample forward affine (B, 2, 3) in normalised coordinates (original -> augmented), and
    whether each sample is flipped (B,) bool.

    The point p goes to flip(scale * rotate(zoom * (p - centre))); centre and zoom come from the
    half-body choice (0 and 1 without it), computed from the keypoints in normalised coordinates.
    """
    device = uniforms.device
    batch = uniforms.shape[0]
    flip = uniforms[:, 0] < config.flip
    rotating = uniforms[:, 1] < config.rotate_p
    angle = (2 * uniforms[:, 2] - 1) * math.radians(config.rotate) * rotating
    scale = config.scale_min + uniforms[:, 3] * (config.scale_max - config.scale_min)
    centre = torch.zeros(batch, 2, device=device)
    zoom = torch.ones(batch, device=device)
    if config.half_body > 0 and keypoints is not None:
        centre, zoom = _half_body(uniforms, keypoints, visibility, config.half_body)
    cos, sin = torch.cos(angle), torch.sin(angle)
    linear = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # (B, 2, 2)
    linear = linear * (scale * zoom)[:, None, None]
    mirror = torch.where(flip, -1.0, 1.0).to(linear.dtype)
    linear = torch.cat([linear[:, :1] * mirror[:, None, None], linear[:, 1:]], dim=1)
    shift = -(linear @ centre[:, :, None])
    return torch.cat([linear, shift], dim=2), flip


def _half_body(uniforms, keypoints, visibility, probability: float):
    """Centre and zoom onto the upper or the lower body's labelled joints (normalised coordinates);
    a sample with fewer than 2 such joints keeps the whole crop."""
    upper = torch.arange(keypoints.shape[1], device=keypoints.device) < UPPER_BODY_JOINTS
    chosen = torch.where((uniforms[:, 5] < 0.5)[:, None], upper[None], ~upper[None]) & (visibility > 0)
    use = (uniforms[:, 4] < probability) & (chosen.sum(1) >= 2)
    big = torch.finfo(keypoints.dtype).max
    low = torch.where(chosen[..., None], keypoints, big).amin(1)
    high = torch.where(chosen[..., None], keypoints, -big).amax(1)
    extent = (high - low).amax(1).clamp(min=1e-3) * HALF_BODY_PADDING
    zoom = (2 / extent).clamp(1.0, HALF_BODY_MAX_ZOOM)
    centre = torch.where(use[:, None], (low + high) / 2, torch.zeros_like(low))
    return centre, torch.where(use, zoom, torch.ones_like(zoom))


def inverse_affine(forward: torch.Tensor) -> torch.Tensor:
    """(B, 2, 3) inverses of affine maps, in closed form: torch.linalg.inv would check for singular
    matrices with a host sync on a GPU (these never are: rotation x scale x flip)."""
    a, b, c = forward[:, 0, 0], forward[:, 0, 1], forward[:, 0, 2]
    d, e, f = forward[:, 1, 0], forward[:, 1, 1], forward[:, 1, 2]
    det = a * e - b * d
    ia, ib, id_, ie = e / det, -b / det, -d / det, a / det
    return torch.stack([torch.stack([ia, ib, -(ia * c + ib * f)], -1),
                        torch.stack([id_, ie, -(id_ * c + ie * f)], -1)], -2)


def warp_images(images: torch.Tensor, forward: torch.Tensor) -> torch.Tensor:
    """Each image moved by its forward matrix: one affine_grid + grid_sample for the batch (bilinear,
    zeros where the source crop has no pixels)."""
    theta = inverse_affine(forward)  # grid_sample asks, for each output pixel, where to read
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@functools.lru_cache(maxsize=8)
def _flip_order(num_keypoints: int, device: str) -> torch.Tensor:
    return torch.tensor(flip_permutation(num_keypoints), device=device)  # one copy per device, not per step


def warp_keypoints(keypoints: torch.Tensor, visibility: torch.Tensor, forward: torch.Tensor, flip: torch.Tensor,
                   heatmap_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Heatmap pixel-centre keypoints moved by the same matrices; a flipped sample's joints swap
    left and right; a joint pushed off the heatmap gets visibility 0 (no target)."""
    points = to_normalised(keypoints.float(), heatmap_size)
    moved = points @ forward[:, :, :2].transpose(1, 2) + forward[:, None, :, 2]
    moved = from_normalised(moved, heatmap_size)
    order = _flip_order(keypoints.shape[1], str(keypoints.device))
    swapped = flip[:, None]
    moved = torch.where(swapped[..., None], moved[:, order], moved)
    visibility = torch.where(swapped, visibility[:, order], visibility)
    inside = ((moved >= -0.5) & (moved < heatmap_size - 0.5)).all(-1)
    return moved, visibility * inside.to(visibility.dtype)


class BatchAugment:
    """The training step's augmentation for one epoch: call it on a device batch."""

    def __init__(self, config: AugmentConfig, seed: int, epoch: int, heatmap_size: int):
        self.config, self.seed, self.epoch, self.heatmap_size = config, seed, epoch, heatmap_size

    def __call__(self, images: torch.Tensor, keypoints: torch.Tensor, visibility: torch.Tensor, indices):
        """images float (B, C, S, S); keypoints (B, K, 2) heatmap pixel-centre coordinates; visibility
        (B, K); indices (B,) the samples' dataset positions (on the host). Returns the three, moved."""
        uniforms = draw_uniforms(self.seed, self.epoch, indices)
        if images.is_cuda:  # from pinned memory the copy is asynchronous: no wait for the running step
            uniforms = uniforms.pin_memory()
        uniforms = uniforms.to(images.device, non_blocking=True)
        normalised = to_normalised(keypoints.float(), self.heatmap_size)
        forward, flip = forward_matrices(self.config, uniforms, normalised, visibility)
        images = warp_images(images, forward)
        keypoints, visibility = warp_keypoints(keypoints, visibility, forward, flip, self.heatmap_size)
        return images, keypoints, visibility
