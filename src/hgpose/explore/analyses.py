"""Looking inside a trained hourglass: every analysis of `hgpose explore` as a function returning arrays.

Conventions shared by all of them:
- `images` are person crops as the dataset gives them: uint8 RGB (N, 3, S, S), a tensor or an array;
  the network sees them through hgpose.model.to_model_input. They run on the model's device, in
  batches, with the model in eval mode; nothing is changed on the model (lesions are undone).
- S is the input side, h = S / 4 the heatmap side, K the keypoints (17), L the hourglass depth.
- Levels are numbered from the outside in: level 1 works at h x h (its skip branch keeps that
  resolution, its low branch pools to h/2), level L is the innermost; `stack` picks the hourglass
  (the seed has one).
- Keypoint coordinates are heatmap pixel-centre coordinates unless said otherwise
  (hgpose.data.transforms); input coordinates u = 4 (x + 0.5) - 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from hgpose.evaluation.pck import counted_mask, pck, seed_normalizer
from hgpose.model.heatmaps import decode_heatmaps, render_heatmaps
from hgpose.model.hourglass import Hourglass, HourglassNet, to_model_input
from hgpose.runtime.progress import progress_bar

DEFAULT_BATCH = 16


def as_crops(images) -> torch.Tensor:
    images = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images: expected uint8 (N, 3, S, S) crops, got {tuple(images.shape)} "
                         f"{images.dtype}")
    return images


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def in_batches(images: torch.Tensor, batch_size: int):
    for start in range(0, len(images), batch_size):
        yield start, images[start : start + batch_size]


def hourglass_levels(model: HourglassNet, stack: int = -1) -> list[Hourglass]:
    return model.hourglasses[stack].levels()


def level_resolutions(model: HourglassNet) -> list[int]:
    """The side of each level's skip branch (its output), outermost first: h, h/2, ..."""
    h = model.config.heatmap_size
    return [h >> i for i in range(model.config.depth)]


@contextmanager
def evaluating(model: torch.nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextmanager
def forward_hooks(modules_and_callbacks):
    handles = [m.register_forward_hook(cb) for m, cb in modules_and_callbacks]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


# --- 1. heatmaps ---------------------------------------------------------------------------------------


@torch.no_grad()
def heatmaps(model: HourglassNet, images, batch_size: int = DEFAULT_BATCH) -> np.ndarray:
    """Predicted heatmaps of the last stack: (N, K, h, h) float32."""
    images, device, out = as_crops(images), model_device(model), []
    with evaluating(model):
        for _, batch in in_batches(images, batch_size):
            out.append(model(to_model_input(batch.to(device))).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, model.config.num_keypoints, 0, 0), np.float32)


def target_heatmaps(keypoints, visibility, heatmap_size: int) -> np.ndarray:
    """The training targets (unit Gaussians, sigma 1) for (N, K, 2) keypoints: (N, K, h, h) float32."""
    maps, _ = render_heatmaps(torch.as_tensor(np.asarray(keypoints)), torch.as_tensor(np.asarray(visibility)),
                              heatmap_size)
    return maps.numpy()


def decode(maps) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps (N, K, h, h) -> coords (N, K, 2) heatmap pixel-centre coordinates, confidence (N, K)."""
    coords, confidence = decode_heatmaps(torch.as_tensor(np.asarray(maps)))
    return coords.numpy(), confidence.numpy()


# --- 2. activations ------------------------------------------------------------------------------------


def stage_names(depth: int) -> list[str]:
    """stem, down1..downL, bottleneck, upL..up1: the order activations() returns them in."""
    return ["stem", *(f"down{i}" for i in range(1, depth + 1)), "bottleneck",
            *(f"up{i}" for i in range(depth, 0, -1))]


@torch.no_grad()
def stage_batches(model: HourglassNet, images, stack: int = -1, batch_size: int = DEFAULT_BATCH,
                  head: bool = False):
    """Per batch of crops: (start, {stage: (B, C, H, W) float32 CPU tensor} in stage_names order, plus
    "head" (the head's features, the input of its final 1x1 convolution) when `head`, and the predicted
    heatmaps (B, K, h, h)). One forward pass per batch; the stages are not kept between batches."""
    images, device = as_crops(images), model_device(model)
    levels = hourglass_levels(model, stack)
    names = [*stage_names(len(levels)), *(["head"] if head else [])]
    current: dict[str, torch.Tensor] = {}

    def keep(name, first_output: bool = False):
        def hook(module, args, output):
            current[name] = (output[0] if first_output else output).detach().float().cpu()
        return hook

    watched = [(model.stem_res3, keep("stem")), (levels[-1].inner, keep("bottleneck"))]
    watched += [(model.heads[stack], keep("head", first_output=True))] if head else []
    for i, level in enumerate(levels, start=1):
        watched += [(level.low1, keep(f"down{i}")), (level, keep(f"up{i}"))]
    with evaluating(model), forward_hooks(watched):
        for start, batch in in_batches(images, batch_size):
            predicted = model(to_model_input(batch.to(device))).float().cpu()
            yield start, {name: current[name] for name in names}, predicted


def activations(model: HourglassNet, images, stack: int = -1, batch_size: int = DEFAULT_BATCH
                ) -> dict[str, np.ndarray]:
    """Feature maps at every stage of one hourglass, {stage: (N, C, H, W) float32}, in stage_names order.

    stem: the stem's output (h x h); down<i>: level i's low branch after pooling and its first
    residual (h / 2^i); bottleneck: the innermost residuals' output (h / 2^L); up<i>: level i's output,
    skip + upsampled low (h / 2^(i-1)). Memory: N x C x H x W floats per stage; keep N small.
    """
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in stage_names(len(hourglass_levels(model, stack)))}
    for _, stages, _ in stage_batches(model, images, stack, batch_size):
        for name, maps in stages.items():
            parts[name].append(maps)
    return {name: torch.cat(maps).numpy() for name, maps in parts.items()}


def stage_rms(model: HourglassNet, images, stack: int = -1, batch_size: int = DEFAULT_BATCH) -> dict[str, float]:
    """Each stage's activation size, sqrt(mean of squares over channels and pixels) per sample, averaged over
    the crops: {stage: RMS} in stage_names order plus "head"."""
    sums: dict[str, float] = {}
    count = 0
    for _, stages, _ in stage_batches(model, images, stack, batch_size, head=True):
        for name, maps in stages.items():
            sums[name] = sums.get(name, 0.0) + float(maps.pow(2).mean(dim=(1, 2, 3)).sqrt().sum())
        count += len(next(iter(stages.values())))
    return {name: total / max(count, 1) for name, total in sums.items()}


# --- 3. skip vs low branch -----------------------------------------------------------------------------


@dataclass
class BranchContributions:
    """Size of each branch's contribution to a level's output, averaged over samples.

    RMS = sqrt(mean of squares over channels and pixels) of the skip branch's output and of the low
    branch's output (nearest upsampling does not change an RMS), per sample, then averaged.
    """

    resolution: np.ndarray  # (L,) int: side of the level's output, outermost level first
    skip: np.ndarray  # (L,) float64 mean RMS of the skip branch
    low: np.ndarray  # (L,) float64 mean RMS of the upsampled low branch
    samples: int

    @property
    def skip_share(self) -> np.ndarray:
        """(L,) skip / (skip + low): 1 = the level passes on only its own resolution."""
        return self.skip / np.maximum(self.skip + self.low, 1e-12)


@torch.no_grad()
def branch_contributions(model: HourglassNet, images, stack: int = -1, batch_size: int = DEFAULT_BATCH
                         ) -> BranchContributions:
    """How much of each level's output comes from its skip branch and how much from its low branch.
    `images`: crops (N, 3, S, S), or an iterable of such batches (or of dataset batches with "image")."""
    device = model_device(model)
    levels = hourglass_levels(model, stack)
    sums = {branch: torch.zeros(len(levels), dtype=torch.float64) for branch in ("skip", "low")}

    def add(branch, i):
        def hook(module, args, output):
            rms = output.detach().float().pow(2).mean(dim=(1, 2, 3)).sqrt()
            sums[branch][i] += rms.double().sum().cpu()
        return hook

    watched = [(level.skip, add("skip", i)) for i, level in enumerate(levels)]
    watched += [(level.low3, add("low", i)) for i, level in enumerate(levels)]
    samples = 0
    with evaluating(model), forward_hooks(watched):
        for batch in _image_batches(images, batch_size):
            model(to_model_input(batch.to(device)))
            samples += len(batch)
    n = max(samples, 1)
    return BranchContributions(np.array(level_resolutions(model)), (sums["skip"] / n).numpy(),
                               (sums["low"] / n).numpy(), samples)


def _image_batches(source, batch_size: int):
    if isinstance(source, (torch.Tensor, np.ndarray)):
        yield from (batch for _, batch in in_batches(as_crops(source), batch_size))
        return
    for batch in source:
        if isinstance(batch, dict):  # a DataLoader over PersonDataset: drop unreadable samples
            batch = batch["image"][batch["valid"]] if "valid" in batch else batch["image"]
        yield as_crops(batch)


# --- 4. saliency ---------------------------------------------------------------------------------------


def saliency(model: HourglassNet, images, joint: int | Sequence[int], batch_size: int = 8) -> np.ndarray:
    """|d peak / d input pixel|, the largest over the 3 colour channels, where peak is the maximum of
    the joint's predicted heatmap. joint an int: (N, S, S) float32; a sequence of J joints: (N, J, S, S)."""
    images, device = as_crops(images), model_device(model)
    joints = [joint] if isinstance(joint, (int, np.integer)) else list(joint)
    out = []
    with evaluating(model):
        for _, batch in in_batches(images, batch_size):
            x = to_model_input(batch.to(device)).requires_grad_(True)
            peaks = model(x).flatten(2).amax(dim=-1)  # (B, K); samples are independent in eval mode
            maps = []
            for i, j in enumerate(joints):
                (grad,) = torch.autograd.grad(peaks[:, j].sum(), x, retain_graph=i < len(joints) - 1)
                maps.append(grad.abs().amax(dim=1).cpu())
            out.append(torch.stack(maps, dim=1))
    result = torch.cat(out).numpy() if out else np.zeros((0, len(joints), 0, 0), np.float32)
    return result[:, 0] if isinstance(joint, (int, np.integer)) else result


def saliency_share(maps, points, radius: float) -> np.ndarray:
    """Share of each saliency map (..., S, S) lying within `radius` input pixels of its point (..., 2)
    (input pixel-centre x, y). A uniform map gives about pi radius^2 / S^2. Returns (...) float64."""
    maps = np.asarray(maps, dtype=np.float64)
    points = np.asarray(points, dtype=np.float64)
    size_y, size_x = maps.shape[-2:]
    ys, xs = np.mgrid[0:size_y, 0:size_x]
    dx = xs - points[..., 0, None, None]
    dy = ys - points[..., 1, None, None]
    near = dx**2 + dy**2 <= radius**2
    total = maps.sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (maps * near).sum(axis=(-2, -1)) / total, np.nan)


def uniform_share(size: int, radius: float) -> float:
    """saliency_share of a uniform map around the centre of a size x size crop."""
    return float(saliency_share(np.ones((size, size)), [(size - 1) / 2, (size - 1) / 2], radius))


def to_input_coords(coords, input_size: int, heatmap_size: int) -> np.ndarray:
    """Heatmap pixel-centre coordinates -> input pixel-centre coordinates (same convention, scaled)."""
    scale = input_size / heatmap_size
    return (np.asarray(coords, dtype=np.float64) + 0.5) * scale - 0.5


# --- 5. occlusion --------------------------------------------------------------------------------------


@dataclass
class Occlusion:
    """What a grey patch at each position does to each joint (grid position (i, j) = patch with top-left
    corner at (x, y) = (j * stride, i * stride) in input pixels)."""

    confidence_drop: np.ndarray  # (K, G, G) float32: clean peak value - occluded peak value
    shift: np.ndarray  # (K, G, G) float32: how far the decoded keypoint moves, in input pixels
    confidence: np.ndarray  # (K,) clean confidence
    coords: np.ndarray  # (K, 2) clean keypoints, input pixel-centre coordinates
    patch: int
    stride: int

    @property
    def centres(self) -> np.ndarray:
        """(G,) input coordinate of the patch centres along either axis."""
        return np.arange(self.shift.shape[-1]) * self.stride + (self.patch - 1) / 2


def occlusion_defaults(size: int) -> tuple[int, int]:
    """(patch, stride) occlusion uses for a size x size crop: S/8 and half of that."""
    patch = max(1, size // 8)
    return patch, max(1, patch // 2)


@torch.no_grad()
def occlusion(model: HourglassNet, image, patch: int | None = None, stride: int | None = None,
              fill: int = 128, batch_size: int = DEFAULT_BATCH) -> Occlusion:
    """Slide a grey (fill) square of `patch` input pixels (default S/8) with `stride` (default patch/2)
    over one crop (3, S, S) and record every joint's confidence drop and location shift (K, G, G),
    G = (S - patch) // stride + 1."""
    image = as_crops(np.asarray(image)[None])[0]
    size = image.shape[-1]
    patch = patch or occlusion_defaults(size)[0]
    stride = stride or max(1, patch // 2)
    if not 0 < patch <= size or stride < 1:
        raise ValueError(f"occlusion: patch {patch} and stride {stride} must fit a {size}-pixel crop")
    starts = range(0, size - patch + 1, stride)
    grid = len(starts)
    occluded = image.repeat(grid * grid, 1, 1, 1)
    for n, (i, j) in enumerate((i, j) for i in starts for j in starts):
        occluded[n, :, i : i + patch, j : j + patch] = fill
    scale = size / model.config.heatmap_size
    clean_coords, clean_conf = decode_heatmaps(torch.as_tensor(heatmaps(model, image[None])))
    coords, conf = decode_heatmaps(torch.as_tensor(heatmaps(model, occluded, batch_size)))
    drop = (clean_conf - conf).T.reshape(-1, grid, grid)
    shift = (torch.linalg.vector_norm(coords - clean_coords, dim=-1) * scale).T.reshape(-1, grid, grid)
    return Occlusion(drop.numpy(), shift.numpy(), clean_conf[0].numpy(),
                     to_input_coords(clean_coords[0].numpy(), size, model.config.heatmap_size), patch, stride)


# --- 6. lesion study -----------------------------------------------------------------------------------


@dataclass
class LesionStudy:
    """PCK of the intact model and with one branch of one level zeroed at a time."""

    names: list[str]  # (M,) "intact", "level 1 skip", "level 1 low", ..., "level L low"
    level: np.ndarray  # (M,) int: the lesioned level (0 for intact)
    branch: list[str]  # (M,) "", "skip" or "low"
    overall: np.ndarray  # (M,) float64 PCK pooled over keypoints
    per_joint: np.ndarray  # (M, K) float64 per-joint PCK (NaN where nothing is counted)
    coords: np.ndarray  # (M, N, K, 2) float32 the predictions under each condition

    def pck(self, name: str) -> float:
        return float(self.overall[self.names.index(name)])


@contextmanager
def lesioned(model: HourglassNet, level: int, branch: str, stack: int = -1):
    """Zero one branch ("skip" or "low") of level `level` (1 = outermost) while inside the block."""
    target = hourglass_levels(model, stack)[level - 1]
    target.ablate = branch
    try:
        yield model
    finally:
        target.ablate = None


@contextmanager
def _stem_given(model: HourglassNet):
    """Inside the block the model takes stem features instead of images (the stem never changes under a
    lesion, so it is computed once per batch)."""
    model.stem = lambda x: x  # an instance attribute shadows the method
    try:
        yield model
    finally:
        del model.stem


@torch.no_grad()
def lesion_study(model: HourglassNet, images, keypoints, visibility, normalizer: float | None = None,
                 stack: int = -1, batch_size: int = DEFAULT_BATCH, progress: bool = False) -> LesionStudy:
    """PCK (the seed's) on crops (N, 3, S, S) with true keypoints (N, K, 2) and COCO visibility (N, K),
    intact and with each level's skip branch, then its low branch, zeroed in turn."""
    images, device = as_crops(images), model_device(model)
    normalizer = seed_normalizer(model.config.heatmap_size) if normalizer is None else normalizer
    depth = len(hourglass_levels(model, stack))
    conditions = [(0, "")] + [(level, branch) for level in range(1, depth + 1) for branch in ("skip", "low")]
    coords = [[] for _ in conditions]
    with evaluating(model):
        batches = list(in_batches(images, batch_size))
        for _, batch in progress_bar(batches, desc="lesions", leave=False, disable=not progress):
            features = model.stem(to_model_input(batch.to(device)))
            with _stem_given(model):
                for c, (level, branch) in enumerate(conditions):
                    if level:
                        with lesioned(model, level, branch, stack):
                            out = model(features)
                    else:
                        out = model(features)
                    coords[c].append(decode_heatmaps(out)[0].cpu())
    coords = np.stack([torch.cat(c).numpy() for c in coords])
    results = [pck(c, keypoints, visibility, normalizer) for c in coords]
    return LesionStudy(
        names=["intact" if not level else f"level {level} {branch}" for level, branch in conditions],
        level=np.array([level for level, _ in conditions]),
        branch=[branch for _, branch in conditions],
        overall=np.array([r.overall for r in results]),
        per_joint=np.stack([r.per_joint for r in results]),
        coords=coords,
    )


# --- 7. where it fails ---------------------------------------------------------------------------------


@dataclass
class Failures:
    overall: float  # PCK pooled over keypoints
    per_joint: np.ndarray  # (K,) PCK per joint, NaN where nothing is counted
    counted: np.ndarray  # (K,) labelled keypoints per joint
    errors: np.ndarray  # (N,) mean distance of a sample's labelled keypoints, heatmap pixels (NaN: none)
    worst: np.ndarray  # (W,) sample positions, largest mean error first


def failures(coords, gt, visibility, normalizer: float, worst: int = 8) -> Failures:
    """Per-joint PCK and the samples with the largest mean keypoint error. coords, gt: (N, K, 2) heatmap
    coordinates; visibility (N, K) COCO flags (1 and 2 count)."""
    result = pck(coords, gt, visibility, normalizer)
    counted = counted_mask(visibility)
    distances = np.linalg.norm(np.asarray(coords, np.float64) - np.asarray(gt, np.float64), axis=-1)
    total = np.where(counted, distances, 0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        errors = np.where(counted.any(axis=1), total / counted.sum(axis=1), np.nan)
    ranked = np.argsort(np.where(np.isnan(errors), -np.inf, -errors), kind="stable")
    ranked = ranked[~np.isnan(errors[ranked])][:worst]
    return Failures(result.overall, result.per_joint, result.counted, errors, ranked)
