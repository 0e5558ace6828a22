"""The one inference loop: a model over a loader's batches, decoded into keypoints, as numpy arrays.
It knows no metric: PCK (evaluation.pck) and COCO AP (evaluation.coco) are computed from its outputs,
as detectron2's inference_on_dataset feeds its evaluators."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import BatchSampler

from hgpose.data.loader import device_batches
from hgpose.evaluation.pck import pck_bearpaw
from hgpose.model.heatmaps import decode_heatmaps, render_heatmaps
from hgpose.model.heatmaps import flip_test as flip_test_heatmaps
from hgpose.model.hourglass import to_model_input
from hgpose.runtime.files import UserError
from hgpose.runtime.precision import autocast
from hgpose.runtime.progress import progress_bar


@dataclass
class Inference:
    """A model's predictions over a split, sorted by dataset index, on the CPU as numpy arrays.

    Samples whose image could not be read are kept (valid False) with visibility 0, so PCK never
    counts them; `skipped` is how many there were.
    """

    indices: np.ndarray  # (N,) int64 dataset indices
    coords: np.ndarray  # (N, K, 2) float32 decoded predictions, heatmap pixel-centre coordinates
    confidence: np.ndarray  # (N, K) float32 heatmap maxima
    gt: np.ndarray  # (N, K, 2) float32 true keypoints, heatmap coordinates
    visibility: np.ndarray  # (N, K) int64 COCO flags, 0 off the heatmap or for an invalid sample
    valid: np.ndarray  # (N,) bool
    loss: float  # mean heatmap MSE over valid samples (NaN when not computed)
    skipped: int
    sample_loss: np.ndarray | None = None  # (N,) per-sample heatmap MSE
    bearpaw_batches: np.ndarray | None = None  # (B, 1 + K) pck_bearpaw rows, one per batch
    bearpaw_batch_sizes: np.ndarray | None = None  # (B,) their batch sizes


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() \
        and torch.distributed.get_world_size() > 1


def _gather_ranks(parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Concatenate every rank's arrays (all ranks get all of them)."""
    if not _distributed():
        return parts
    gathered: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, parts)
    return {key: np.concatenate([g[key] for g in gathered]) for key in parts}


class _Outputs:
    """Per-sample results written into tensors allocated once, at the first batch, for as many
    samples as the loader announces: no per-batch allocation outlives its batch, so memory stays
    flat over any number of batches (small per-batch tensors kept in lists pinned freed large
    blocks: +2.8 GB of heap over a val2017 pass). A loader that yields more than it announced
    (a plain iterable) only costs a doubling now and then."""

    def __init__(self, capacity: int, device):
        self.capacity, self.device, self.filled = max(int(capacity), 1), device, 0
        self.arrays: dict[str, torch.Tensor] = {}

    def add(self, values: dict[str, torch.Tensor]) -> None:
        n = len(next(iter(values.values())))
        if self.filled + n > self.capacity:
            while self.filled + n > self.capacity:
                self.capacity *= 2
            for key, old in self.arrays.items():
                self.arrays[key] = torch.empty((self.capacity, *old.shape[1:]), dtype=old.dtype, device=self.device)
                self.arrays[key][: self.filled] = old[: self.filled]
        for key, value in values.items():
            if key not in self.arrays:
                self.arrays[key] = torch.empty((self.capacity, *value.shape[1:]), dtype=value.dtype,
                                               device=self.device)
            self.arrays[key][self.filled : self.filled + n] = value
        self.filled += n

    def numpy(self) -> dict[str, np.ndarray]:
        return {key: value[: self.filled].cpu().numpy() for key, value in self.arrays.items()}


def _announced(loader) -> tuple[int, int]:
    """(samples, batches) a DataLoader will yield (0 when unknown: a plain iterable of batches)."""
    sampler = getattr(loader, "batch_sampler", None) or getattr(loader, "sampler", None)
    if not isinstance(sampler, BatchSampler):
        return 0, 0
    return len(sampler.sampler), len(loader)


@torch.no_grad()  # not inference_mode: the channels-last parameters must stay usable for training
def infer(model, loader, *, device, precision: str = "fp32", channels_last: bool = True,
          compute_loss: bool = True, bearpaw: bool = False, progress: bool = True,
          desc: str = "val", flip_test: bool = False, decode: str = "quarter") -> Inference:
    """Run `model` (eval mode, last stack) over `loader`'s batches and decode every prediction.

    Results stay on the device until the end (one transfer, no per-batch host sync), in arrays
    allocated once (memory stays flat over any number of batches). Under torch.distributed every
    rank returns the whole split, each sample once (padding repeats dropped by index).
    channels_last converts the model in place (as training does). The model's train/eval mode is
    restored afterwards. flip_test averages each crop's heatmaps with its mirror's (hgpose.model.heatmaps);
    decode is a decode_heatmaps method.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    samples, batches = _announced(loader)
    outputs, per_batch = _Outputs(samples, device), _Outputs(batches, device)
    try:
        bar = progress_bar(loader, desc=desc, unit="batch", disable=not progress, leave=False, dynamic_ncols=True)
        for batch in device_batches(bar, device):
            images = to_model_input(batch["image"].to(device, non_blocking=True))
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            keypoints = batch["keypoints"].to(device, non_blocking=True)
            valid = batch["valid"].to(device, non_blocking=True)
            visibility = batch["visibility"].to(device, non_blocking=True) * valid.unsqueeze(-1)
            with autocast(device, precision):
                heatmaps = flip_test_heatmaps(model, images) if flip_test else model(images)
            heatmaps = heatmaps.float()
            coords, confidence = decode_heatmaps(heatmaps, decode)
            row = {"indices": batch["index"].to(device), "coords": coords, "confidence": confidence,
                   "gt": keypoints, "visibility": visibility, "valid": valid}
            if compute_loss or bearpaw:
                targets, _ = render_heatmaps(keypoints, visibility, heatmaps.shape[-1])
            if compute_loss:
                # per sample, so that the mean over the split is exact after dropping DDP padding;
                # the same MSE as heatmap_loss (mean over every element of the sample's maps)
                row["sample_loss"] = ((heatmaps - targets) ** 2).mean(dim=(1, 2, 3))
            if bearpaw:
                per_batch.add({"rows": pck_bearpaw(heatmaps, targets).unsqueeze(0),
                               "sizes": torch.tensor([len(images)], device=device)})
            outputs.add(row)
            del heatmaps, images, row
    finally:
        model.train(was_training)

    return _collect(outputs, per_batch if bearpaw else None)


def _collect(outputs: _Outputs, per_batch: _Outputs | None) -> Inference:
    """The loop's device arrays as an Inference: on the CPU, every rank's samples gathered, sorted by
    dataset index with DDP's padding repeats dropped; per_batch: the bearpaw rows, when computed."""
    if not outputs.filled:
        raise UserError("nothing to evaluate: the split is empty")
    parts = outputs.numpy()
    batch_parts = per_batch.numpy() if per_batch is not None else {}
    bearpaw_rows = batch_parts.get("rows")
    batch_sizes = batch_parts.get("sizes", np.zeros(0, np.int64)).tolist()
    parts = _gather_ranks(parts)
    if per_batch is not None:
        bearpaw_rows = _gather_ranks({"rows": bearpaw_rows, "sizes": np.asarray(batch_sizes)})
        bearpaw_rows, batch_sizes = bearpaw_rows["rows"], bearpaw_rows["sizes"]
    _, first = np.unique(parts["indices"], return_index=True)  # sorted by index, repeats dropped
    parts = {key: value[first] for key, value in parts.items()}
    valid = parts["valid"].astype(bool)
    sample_loss = parts.get("sample_loss")
    loss = float(sample_loss[valid].astype(np.float64).mean()) if sample_loss is not None and valid.any() \
        else float("nan")
    return Inference(
        indices=parts["indices"].astype(np.int64),
        coords=parts["coords"].astype(np.float32),
        confidence=parts["confidence"].astype(np.float32),
        gt=parts["gt"].astype(np.float32),
        visibility=parts["visibility"].astype(np.int64),
        valid=valid,
        loss=loss,
        skipped=int((~valid).sum()),
        sample_loss=sample_loss,
        bearpaw_batches=bearpaw_rows,
        bearpaw_batch_sizes=np.asarray(batch_sizes, dtype=np.int64) if per_batch is not None else None,
    )
