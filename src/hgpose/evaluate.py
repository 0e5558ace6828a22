"""Evaluation: heatmap decoding, PCK (the seed's and bearpaw/pytorch-pose's), COCO keypoint AP.

The seed's PCK (Section 1.1): a labelled keypoint (v = 1 or 2) is correct when
||pred - gt|| / c < r, with c = heatmap size / 10 (6.4 for 64x64 heatmaps) and r = 0.5, both in
heatmap pixels; gt is the true sub-pixel keypoint. The figure is pooled over every counted keypoint.

`pck_bearpaw` reproduces bearpaw/pytorch-pose's `accuracy()` instead (ground truth = argmax of the
target heatmap, integer argmax predictions, per-joint means averaged, batch figures averaged), so a
number can be compared with work that used that code. docs/protocol.md lists the differences.
"""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from hgpose.coco_names import KEYPOINT_NAMES
from hgpose.data.targets import render_heatmaps
from hgpose.data.transforms import frame_to_image
from hgpose.fileio import UserError, atomic_write_json
from hgpose.model import to_model_input
from hgpose.precision import autocast, resolve_precision

PCK_THRESHOLD = 0.5  # r
DEFAULT_CURVE_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 21))  # 0.05 .. 1.0
COCO_STAT_NAMES = ("AP", "AP50", "AP75", "AP_M", "AP_L", "AR", "AR50", "AR75", "AR_M", "AR_L")
PCK_STYLES = ("seed", "bearpaw")
DECODE_METHODS = ("quarter", "dark")


def seed_normalizer(heatmap_size: int) -> float:
    """The seed's c, a tenth of the heatmap side (after Olsen), computed as the seed writes it: 64 / 10 = 6.4."""
    return heatmap_size / 10


# --- decoding ------------------------------------------------------------------------------------


def decode_heatmaps(heatmaps: torch.Tensor, method: str = "quarter") -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K, H, W) heatmaps -> coords (N, K, 2) float32 (x, y) in heatmap pixel-centre coordinates
    and confidence (N, K) = the heatmap maximum.

    Argmax, then "quarter": a quarter pixel toward the larger neighbour in x and in y where both
    neighbours exist (no shift when they are equal), or "dark": the Taylor step of DARK on the
    smoothed log heatmap (hgpose.dark). Runs on the tensor's device with no host sync.
    """
    if method not in DECODE_METHODS:
        raise UserError(f"--decode must be one of {', '.join(DECODE_METHODS)}, got {method!r}")
    heatmaps = heatmaps.float()
    n, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(n, k, h * w)  # reshape, not view: channels-last outputs are not contiguous
    confidence, index = flat.max(dim=-1)
    x, y = index % w, torch.div(index, w, rounding_mode="floor")

    def value_at(dx: int, dy: int) -> torch.Tensor:
        at = (y + dy).clamp(0, h - 1) * w + (x + dx).clamp(0, w - 1)
        return flat.gather(-1, at.unsqueeze(-1)).squeeze(-1)

    if method == "dark":
        from hgpose.dark import dark_offsets

        return torch.stack([x, y], dim=-1).float() + dark_offsets(heatmaps, x, y), confidence
    inner_x = (x > 0) & (x < w - 1)
    inner_y = (y > 0) & (y < h - 1)
    shift_x = torch.sign(value_at(1, 0) - value_at(-1, 0)) * inner_x
    shift_y = torch.sign(value_at(0, 1) - value_at(0, -1)) * inner_y
    coords = torch.stack([x + 0.25 * shift_x, y + 0.25 * shift_y], dim=-1).float()
    return coords, confidence


# --- PCK ---------------------------------------------------------------------------------------------


@dataclass
class PCKResult:
    """PCK of one set of predictions. per_joint is NaN for a joint with nothing counted."""

    overall: float  # correct / counted, pooled over every counted keypoint
    per_joint: np.ndarray  # (K,)
    mean_per_joint: float  # mean of per_joint over joints that have a value
    correct: np.ndarray  # (K,) int64
    counted: np.ndarray  # (K,) int64
    normalizer: float
    threshold: float

    def to_dict(self, names=KEYPOINT_NAMES) -> dict:
        """JSON-ready (NaN -> None), per joint keyed by keypoint name."""
        names = names if len(names) == len(self.per_joint) else [str(i) for i in range(len(self.per_joint))]
        return {
            "overall": _json_float(self.overall),
            "mean_per_joint": _json_float(self.mean_per_joint),
            "correct": int(self.correct.sum()),
            "counted": int(self.counted.sum()),
            "per_joint": {name: _json_float(v) for name, v in zip(names, self.per_joint)},
            "per_joint_counted": {name: int(c) for name, c in zip(names, self.counted)},
            "normalizer": self.normalizer,
            "threshold": self.threshold,
        }


def _numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _json_float(x) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def normalized_distances(pred, gt, normalizer) -> np.ndarray:
    """(N, K) ||pred - gt|| / normalizer; normalizer is a number or one per sample (N,)."""
    pred, gt = _numpy(pred).astype(np.float64), _numpy(gt).astype(np.float64)
    normalizer = np.asarray(_numpy(normalizer), dtype=np.float64)
    if normalizer.ndim == 1:
        normalizer = normalizer[:, None]
    return np.linalg.norm(pred - gt, axis=-1) / normalizer


def counted_mask(visibility) -> np.ndarray:
    """Keypoints PCK counts: COCO flag 1 (labelled, occluded) or 2 (labelled, visible)."""
    visibility = _numpy(visibility)
    return (visibility == 1) | (visibility == 2)


def pck_from_distances(distances: np.ndarray, counted: np.ndarray, threshold: float = PCK_THRESHOLD,
                       normalizer: float = float("nan")) -> PCKResult:
    correct_mask = counted & (distances < threshold)  # strict; a NaN distance is counted and wrong
    correct = correct_mask.sum(axis=0).astype(np.int64)
    counts = counted.sum(axis=0).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_joint = np.where(counts > 0, correct / np.maximum(counts, 1), np.nan)
    total = counts.sum()
    overall = correct.sum() / total if total else float("nan")
    has_value = ~np.isnan(per_joint)
    mean_per_joint = float(per_joint[has_value].mean()) if has_value.any() else float("nan")
    return PCKResult(float(overall), per_joint, mean_per_joint, correct, counts,
                     float(np.mean(normalizer)) if np.size(normalizer) else float("nan"), float(threshold))


def pck(pred, gt, visibility, normalizer, threshold: float = PCK_THRESHOLD) -> PCKResult:
    """Percentage of correct keypoints, exactly as the seed defines it.

    pred, gt: (N, K, 2) in heatmap pixels (gt: the true sub-pixel keypoint); visibility: (N, K) COCO
    flags, only 1 and 2 are counted (callers pass 0 for keypoints off the heatmap); normalizer: c,
    a number or one per sample. Correct: ||pred - gt|| / c < threshold (strict). numpy or torch input.
    """
    distances = normalized_distances(pred, gt, normalizer)
    return pck_from_distances(distances, counted_mask(visibility), threshold, _numpy(normalizer))


def pck_curve(pred, gt, visibility, normalizer, thresholds=DEFAULT_CURVE_THRESHOLDS) -> list[float]:
    """Overall PCK at each threshold (the distances are computed once)."""
    distances = normalized_distances(pred, gt, normalizer)
    counted = counted_mask(visibility)
    total = counted.sum()
    return [float((counted & (distances < t)).sum() / total) if total else float("nan") for t in thresholds]


# --- PCK as bearpaw/pytorch-pose computes it -----------------------------------------------------------


def bearpaw_argmax(heatmaps: torch.Tensor) -> torch.Tensor:
    """pytorch-pose's get_preds: 1-based integer argmax (x, y) per map, (0, 0) where the max is <= 0."""
    n, k, h, w = heatmaps.shape
    maxval, index = heatmaps.reshape(n, k, h * w).max(dim=-1)
    coords = torch.stack([index % w, torch.div(index, w, rounding_mode="floor")], dim=-1).float() + 1
    return coords * (maxval > 0).unsqueeze(-1)


def pck_bearpaw(output: torch.Tensor, target: torch.Tensor, joints=None, threshold: float = PCK_THRESHOLD):
    """One batch's accuracy as pytorch-pose's accuracy(output, target, idxs): a tensor laid out as
    theirs, [mean, joint_0, joint_1, ...] on the input's device (no host sync).

    output, target: (N, K, H, W) predicted and target heatmaps; joints: 0-based joints to include
    (theirs are 1-based idxs), default all. A joint entry is -1 when no sample has a valid target for
    it; a target is valid when both 1-based argmax coordinates are > 1 (so an all-zero map, and a
    keypoint in the first row or column, are excluded). Distances are normalised by W / 10. The mean
    is over joints with an entry >= 0, and 0 when there are none (as theirs).
    """
    joints = list(range(output.shape[1])) if joints is None else list(joints)
    preds, gts = bearpaw_argmax(output.float()), bearpaw_argmax(target.float())
    valid = (gts[..., 0] > 1) & (gts[..., 1] > 1)
    distances = torch.linalg.vector_norm(preds - gts, dim=-1) / (output.shape[3] / 10)
    counted = valid.sum(dim=0)
    correct = (valid & (distances < threshold)).sum(dim=0)
    per_joint = torch.where(counted > 0, correct / counted.clamp(min=1), torch.full_like(distances[0], -1.0))
    per_joint = per_joint[joints]
    has = per_joint >= 0
    mean = (per_joint * has).sum() / has.sum().clamp(min=1)  # 0 when no joint has an entry
    return torch.cat([mean.reshape(1), per_joint])


@dataclass
class BearpawPCK:
    """An epoch figure as pytorch-pose reports it: batch accuracies averaged, weighted by batch size."""

    overall: float
    per_joint: np.ndarray  # (K,) the same average of each joint's batch accuracies, skipping -1 entries
    batches: int


def pck_bearpaw_epoch(batch_accuracies, batch_sizes) -> BearpawPCK:
    """Their AverageMeter over batches: sum(acc_b * n_b) / sum(n_b). batch_accuracies: (B, 1 + K)
    rows from pck_bearpaw; batch_sizes: (B,)."""
    acc = _numpy(batch_accuracies).astype(np.float64).reshape(len(batch_sizes), -1)
    sizes = _numpy(batch_sizes).astype(np.float64)
    if not len(sizes):
        return BearpawPCK(float("nan"), np.full(max(acc.shape[1] - 1, 0), np.nan), 0)
    overall = float((acc[:, 0] * sizes).sum() / sizes.sum())
    joint_acc, has = acc[:, 1:], acc[:, 1:] >= 0
    weights = has * sizes[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        per_joint = np.where(weights.sum(0) > 0, (joint_acc * weights).sum(0) / weights.sum(0), np.nan)
    return BearpawPCK(overall, per_joint, len(sizes))


# --- running a model over a split ---------------------------------------------------------------------


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
    from torch.utils.data import BatchSampler

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
    restored afterwards. flip_test averages each crop's heatmaps with its mirror's (hgpose.flip);
    decode is a decode_heatmaps method.
    """
    from hgpose.data.loader import device_batches
    from hgpose.flip import flip_test as flip_test_heatmaps
    from hgpose.progress import progress_bar

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

    if not outputs.filled:
        raise UserError("nothing to evaluate: the split is empty")
    parts = outputs.numpy()
    batch_parts = per_batch.numpy() if bearpaw else {}
    bearpaw_rows = batch_parts.get("rows")
    batch_sizes = batch_parts.get("sizes", np.zeros(0, np.int64)).tolist()
    parts = _gather_ranks(parts)
    if bearpaw:
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
        bearpaw_batch_sizes=np.asarray(batch_sizes, dtype=np.int64) if bearpaw else None,
    )


# --- metrics over a split -------------------------------------------------------------------------------


VISIBILITY_GROUPS = {"all": (1, 2), "v2": (2,), "v1": (1,)}


def keep_flags(visibility, flags) -> np.ndarray:
    """Visibility with every flag not in `flags` set to 0 (not counted)."""
    visibility = _numpy(visibility)
    return np.where(np.isin(visibility, flags), visibility, 0)


def pck_groups(inference: Inference, normalizer: float, threshold: float = PCK_THRESHOLD) -> dict:
    """PCK over v in {1, 2} ("all", the seed's figure), v = 2 only and v = 1 only."""
    distances = normalized_distances(inference.coords, inference.gt, normalizer)
    return {
        name: pck_from_distances(distances, counted_mask(keep_flags(inference.visibility, flags)), threshold,
                                 normalizer)
        for name, flags in VISIBILITY_GROUPS.items()
    }


def coco_results(image_ids, image_points, confidence, category_id: int = 1) -> list[dict]:
    """COCO keypoint results: one per instance, (x, y, confidence) triplets, score = mean confidence;
    category_id: the person category of the dataset they belong to."""
    confidence = np.asarray(confidence, np.float64)  # rounded in float64: 0.0833, not 0.08330000191926956
    triplets = np.concatenate([np.round(image_points, 2), np.round(confidence[..., None], 4)], axis=-1)
    scores = confidence.mean(axis=-1)
    return [
        {"image_id": int(i), "category_id": int(category_id), "keypoints": t.reshape(-1).tolist(), "score": float(s)}
        for i, t, s in zip(image_ids, triplets.astype(np.float64), scores)
    ]


def coco_keypoint_stats(annotation_file, results: list[dict], image_ids) -> dict[str, float | None]:
    """pycocotools COCOeval('keypoints') summary stats over `image_ids`; None where undefined
    (pycocotools' -1). From a file, the ground truth holds only those images and their annotations
    (coco_ground_truth); a COCO object is used as it is. Its printing is silenced."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not results:
        return dict.fromkeys(COCO_STAT_NAMES)
    image_ids = sorted({int(i) for i in image_ids})
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = annotation_file if isinstance(annotation_file, COCO) \
            else coco_ground_truth(annotation_file, image_ids)
        coco_dt = coco_gt.loadRes([dict(r) for r in results])  # loadRes adds fields to its input
        evaluator = COCOeval(coco_gt, coco_dt, iouType="keypoints")
        evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: (None if v < 0 else float(v)) for name, v in zip(COCO_STAT_NAMES, evaluator.stats)}


def evaluate_inference(inference: Inference, dataset, thresholds=None, threshold: float = PCK_THRESHOLD,
                       coco: bool = True) -> dict:
    """PCK (all / v2 / v1, per joint), an optional PCK curve, COCO results and COCO keypoint AP.

    `dataset` supplies the crop boxes (to map predictions to image pixels), the heatmap size and the
    PersonIndex (image ids and the annotation file). Returns a JSON-ready dict; the COCO results list
    is under "coco_results" (evaluate_checkpoint writes it to its own file).
    """
    normalizer = seed_normalizer(dataset.heatmap_size)
    groups = pck_groups(inference, normalizer, threshold)
    result = {
        "instances": int(len(inference.indices)),
        "skipped": inference.skipped,
        "loss": _json_float(inference.loss),
        "pck": {name: r.to_dict() for name, r in groups.items()},
    }
    if thresholds is not None:
        thresholds = [float(t) for t in thresholds]
        result["pck_curve"] = {"thresholds": thresholds, **{
            name: [_json_float(v) for v in pck_curve(inference.coords, inference.gt,
                                                     keep_flags(inference.visibility, flags), normalizer,
                                                     thresholds)]
            for name, flags in VISIBILITY_GROUPS.items()}}
    if inference.bearpaw_batches is not None:
        bearpaw = pck_bearpaw_epoch(inference.bearpaw_batches, inference.bearpaw_batch_sizes)
        result["pck_bearpaw"] = {
            "overall": _json_float(bearpaw.overall),
            "per_joint": {n: _json_float(v) for n, v in zip(KEYPOINT_NAMES, bearpaw.per_joint)},
            "batches": bearpaw.batches,
        }
    valid = inference.valid
    indices = inference.indices[valid]
    image_points = frame_to_image(inference.coords[valid], dataset.boxes[indices], dataset.heatmap_size)
    image_ids = dataset.index.image_ids[indices]
    result["coco_results"] = coco_results(image_ids, image_points, inference.confidence[valid],
                                          getattr(dataset.index, "category_id", 1))
    if coco:
        add_coco_stats(result, dataset.index, image_ids, ground_truth_images=image_ids)
    return result


def add_coco_stats(result: dict, index, image_ids, ground_truth_images=None):
    """result["coco"] = COCO keypoint AP of result["coco_results"] over the readable `image_ids`, scored
    against coco_ground_truth(index, ground_truth_images) (None: every image of the file), which is
    returned for further analyses. A pycocotools failure is recorded in result["coco_error"] (one line)
    instead of raised, and None returned, so the PCK figures computed before are never lost."""
    try:
        coco = coco_ground_truth(index, ground_truth_images)
        result["coco"] = coco_keypoint_stats(coco, result["coco_results"], image_ids)
        return coco
    except UserError:
        raise
    except Exception as exc:  # pycocotools on a file from another tool: report, keep the rest
        reason = f"a ground-truth annotation has no {exc}" if isinstance(exc, KeyError) \
            else f"{type(exc).__name__}: {exc}"
        result["coco"] = None
        result["coco_error"] = f"{index.annotation_file}: COCO AP not computed ({reason})"[:300]
        return None


def coco_ground_truth(index, image_ids=None):
    """The ground truth COCOeval scores, as hgpose reads the file: the person category's annotations,
    with what COCOeval needs filled in where another tool left it out (area from the bbox, iscrowd 0,
    num_keypoints from the keypoints), and the people hgpose drops (degenerate box, no keypoint on the
    image, ...) marked ignored (num_keypoints 0, as COCOeval ignores unlabelled people), so that
    predicting every kept person perfectly scores AP 1.

    `index`: a PersonIndex (or anything with .annotation_file, optionally .ann_ids and .category_id),
    or the annotation file itself (every person kept). With `image_ids`, only those images and their
    annotations are indexed (segmentation is always dropped: keypoint OKS never reads it), so scoring
    7.5k held-out people indexes those, not all of train2017's."""
    from pycocotools.coco import COCO

    from hgpose.data.coco import read_annotation_json

    if isinstance(index, (str, Path)):
        annotation_file, category_id, ann_ids = Path(index), None, None
    else:
        annotation_file = Path(index.annotation_file)
        category_id = getattr(index, "category_id", 1)
        ann_ids = getattr(index, "ann_ids", None)  # None: an index-like object that keeps every person
    data = read_annotation_json(annotation_file)
    if category_id is None:  # a bare file: its person category (COCO's id 1 when there are several)
        persons = [c.get("id") for c in data["categories"] if isinstance(c, dict) and c.get("name") == "person"]
        category_id = persons[0] if len(persons) == 1 else 1
    wanted = None if image_ids is None else {int(i) for i in image_ids}
    kept = None if ann_ids is None else set(np.asarray(ann_ids).tolist())
    people = []
    for ann in data["annotations"]:
        if ann.get("category_id") != category_id:
            continue
        if wanted is not None and ann.get("image_id") not in wanted:
            continue
        ann = {k: v for k, v in ann.items() if k != "segmentation"}  # unused by keypoint AP
        ann.setdefault("iscrowd", 0)
        visibility = ann.get("keypoints", [])[2::3]
        ann.setdefault("num_keypoints", sum(1 for v in visibility if isinstance(v, (int, float)) and v > 0))
        if not _is_finite_number(ann.get("area")):
            box = ann.get("bbox")
            ann["area"] = float(box[2] * box[3]) if isinstance(box, list) and len(box) == 4 \
                and all(_is_finite_number(v) for v in box) else 0.0
        if kept is not None and not ann["iscrowd"] and ann.get("id") not in kept:
            ann["num_keypoints"] = 0  # dropped by hgpose: ignored, neither matched nor missed
        people.append(ann)
    categories = [c for c in data["categories"] if isinstance(c, dict) and c.get("id") == category_id]
    coco = COCO()
    images = data["images"] if wanted is None else [im for im in data["images"] if im.get("id") in wanted]
    del data
    coco.dataset = {"images": images, "annotations": people, "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _is_finite_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def unreadable_images(dataset, inference, limit: int = 5) -> dict:
    """{"images": count, "first": [{"file_name", "problem"}, ...]} for the samples that could not be
    read; the first `limit` images are read again to name their problem (cheap: a handful of files)."""
    from hgpose.data.image_report import first_problems

    positions = inference.indices[~inference.valid]
    named = first_problems(dataset, positions, limit, default="unreadable from the cache")
    return {"images": len(set(dataset.index.image_index[positions].tolist())),
            "first": [{"file_name": name, "problem": problem} for name, problem in named.items()]}


# --- hgpose evaluate -------------------------------------------------------------------------------------


HELD_OUT_SPLITS = ("train", "val")  # the seeded parts of train2017 that training uses


def _run_config(checkpoint: Path) -> dict:
    """The data options of the run a checkpoint belongs to (RUN/best.safetensors or
    RUN/checkpoints/epoch_NNN.safetensors), or {} when it is not inside a run directory."""
    import yaml

    for directory in (checkpoint.parent, checkpoint.parent.parent):
        config = directory / "config.yaml"
        if config.is_file():
            try:
                loaded = yaml.safe_load(config.read_text())
            except yaml.YAMLError:
                return {}
            return loaded if isinstance(loaded, dict) else {}
    return {}


def load_eval_index(data_root, split: str, checkpoint: Path):
    """`split` names an annotation file (val2017, ...) or is "train"/"val": the held-out split of
    training, reproduced from the checkpoint's run config (its train split, val split/fraction, seed)."""
    from hgpose.data.coco import annotation_path, build_splits, load_split

    if split in HELD_OUT_SPLITS:
        run = _run_config(Path(checkpoint))
        options = {k: run[k] for k in ("train_split", "val_split", "val_fraction", "seed") if k in run}
        return build_splits(data_root, verbose=False, **options)[split]
    if not annotation_path(data_root, split).is_file() and Path(data_root).is_dir():
        raise UserError(f"--split {split}: no annotation file {annotation_path(data_root, split)} "
                        f"(use a split name with an annotations/person_keypoints_<split>.json, or train/val)")
    return load_split(data_root, split)


def evaluate_checkpoint(checkpoint, data_root, split: str = "val2017", batch_size: int = 32, device="auto",
                        precision: str = "auto", workers: int = 0, out=None, thresholds=None,
                        pck_style: str = "seed", input_size: int | None = None, progress: bool = True,
                        cache="auto", boxes=None, min_box_score: float = 0.0, flip_test: bool = False,
                        decode: str = "quarter", plots: bool = False) -> dict:
    """The library behind `hgpose evaluate`: run a checkpoint over a split and compute every metric.

    Writes the metrics JSON to `out` and the COCO results beside it (<stem>_keypoints.json), both
    atomically. Returns the metrics, with the COCO results list under "coco_results".
    `boxes`: a COCO detection results file; AP is then also computed on those boxes by the top-down
    protocol (hgpose.protocol), its results written to <stem>_keypoints_detected.json. flip_test and
    decode apply to every pass; plots draws the error breakdowns beside `out`.
    """
    from hgpose.data.dataset import PersonDataset
    from hgpose.data.image_report import image_report
    from hgpose.data.loader import make_loader
    from hgpose.device import resolve_device
    from hgpose.model import load_model, read_model_config

    if pck_style not in PCK_STYLES:
        raise UserError(f"--pck-style must be one of {', '.join(PCK_STYLES)}, got {pck_style!r}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    if decode not in DECODE_METHODS:
        raise UserError(f"--decode must be one of {', '.join(DECODE_METHODS)}, got {decode!r}")
    if plots and out is None:
        raise UserError("--plots writes its figures beside --out FILE.json: give --out")
    detections = None
    if boxes is not None:  # read before the model runs: a bad file fails at once
        from hgpose.detections import read_detections

        detections = read_detections(boxes, min_box_score)
    checkpoint = Path(checkpoint)
    config = read_model_config(checkpoint)
    if input_size is not None and input_size != config.input_size:
        raise UserError(f"{checkpoint}: the model was trained at --input-size {config.input_size}, "
                        f"not {input_size}")
    if config.num_keypoints != len(KEYPOINT_NAMES):
        raise UserError(f"{checkpoint}: the model predicts {config.num_keypoints} keypoints; "
                        f"COCO person keypoints need {len(KEYPOINT_NAMES)}")
    device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    precision = resolve_precision(precision, device)  # the result records what actually ran
    index = load_eval_index(data_root, split, checkpoint)
    if len(index) == 0:
        raise UserError(f"{index.annotation_file}: split {split} holds no person instances to evaluate")
    dataset = PersonDataset(index, input_size=config.input_size, cache=cache)
    model = load_model(checkpoint, device=device)
    loader = make_loader(dataset, batch_size, shuffle=False, workers=workers, device=device)
    inference = infer(model, loader, device=device, precision=precision, bearpaw=pck_style == "bearpaw",
                      progress=progress, desc=f"evaluate {split}", flip_test=flip_test, decode=decode)
    unreadable = unreadable_images(dataset, inference) if inference.skipped else None
    size_warnings = image_report(dataset, progress=progress).size_warnings_json()
    result = {
        "checkpoint": str(checkpoint),
        "data": str(data_root),
        "split": split,
        "annotation_file": str(index.annotation_file),
        "model": asdict(config),
        "precision": precision,
        "pck_style": pck_style,
        **evaluate_inference(inference, dataset, thresholds, coco=False),
    }
    if unreadable:
        result["unreadable"] = unreadable
    if size_warnings:
        result["size_warnings"] = size_warnings

    def write():
        atomic_write_json(out, {k: v for k, v in result.items() if not k.endswith("coco_results")})

    if out is not None:  # PCK first: nothing computed so far is lost if COCOeval then fails
        out = Path(out)
        results_file = out.with_name(f"{out.stem}_keypoints.json")
        result["results_file"] = str(results_file)
        atomic_write_json(results_file, result["coco_results"], indent=None)
        write()
    held_out = split in HELD_OUT_SPLITS  # part of an annotation file: its ground truth holds just those images
    coco = add_coco_stats(result, index, index.image_ids[inference.indices[inference.valid]],
                          ground_truth_images=np.unique(index.image_ids) if held_out else None)
    if coco is not None:
        _add_protocol(result, model, detections, index, config, coco, batch_size=batch_size, device=device,
                      precision=precision, workers=workers, flip_test=flip_test, decode=decode,
                      progress=progress)
    if out is not None:
        if detections is not None:
            detected_file = out.with_name(f"{out.stem}_keypoints_detected.json")
            result["detected_boxes"]["results_file"] = str(detected_file)
            atomic_write_json(detected_file, result["detected_coco_results"], indent=None)
        if plots:
            from hgpose.protocol import write_error_figures

            result["plots"] = [str(p) for p in write_error_figures(result, out)]
        write()
    return result


def _add_protocol(result: dict, model, detections, index, config, coco, **run) -> None:
    """The top-down protocol's additions: which boxes each AP used, per-keypoint AP and the error
    breakdown on ground-truth boxes, and with detections the whole block on detected boxes. `coco`:
    the ground truth the ground-truth-box AP was scored against (coco_ground_truth)."""
    from hgpose.protocol import GROUND_TRUTH_BOXES, ap_analysis, evaluate_detected_boxes

    result["protocol"] = {"flip_test": run["flip_test"], "decode": run["decode"],
                          "pck_boxes": f"{GROUND_TRUTH_BOXES} (PCK is a ground-truth-box metric)"}
    result["coco_boxes"] = GROUND_TRUTH_BOXES
    valid_ids = {r["image_id"] for r in result["coco_results"]}
    result.update(ap_analysis(coco, result["coco_results"], sorted(valid_ids)))
    if detections is not None:
        only_images = np.unique(index.image_ids) if result["split"] in HELD_OUT_SPLITS else None  # part of a file
        block, results = evaluate_detected_boxes(model, detections, index.annotation_file, index.image_dir,
                                                 index.split, coco, input_size=config.input_size,
                                                 only_images=only_images, **run)
        result["detected_boxes"] = block
        result["detected_coco_results"] = results


def headline_pck(result: dict) -> float | None:
    """The PCK a result is summarised by: the seed's, or bearpaw's when that style was asked for."""
    if result.get("pck_style") == "bearpaw" and "pck_bearpaw" in result:
        return result["pck_bearpaw"]["overall"]
    return result["pck"]["all"]["overall"]


def _fmt(x, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def format_evaluation(result: dict) -> str:
    """The printed summary: overall PCK, v=2 / v=1, per-joint PCK, COCO AP stats."""
    pcks = result["pck"]
    normalizer, threshold = pcks["all"]["normalizer"], pcks["all"]["threshold"]
    lines = [
        f"{result.get('split', 'split')}: {result['instances']} instances"
        + (f" ({result['skipped']} unreadable, skipped)" if result.get("skipped") else "")
        + (f", heatmap loss {result['loss']:.3e}" if result.get("loss") is not None else ""),
        f"PCK (c = {normalizer:g} heatmap px, r = {threshold:g}): pooled over keypoints / mean of joints",
    ]
    for name, label in (("all", "all labelled (v=1,2)"), ("v2", "visible (v=2)"), ("v1", "occluded (v=1)")):
        p = pcks[name]
        lines.append(f"  {label:<22}{_fmt(p['overall']):>7} / {_fmt(p['mean_per_joint'])}"
                     f"   ({p['correct']}/{p['counted']})")
    if "pck_bearpaw" in result:
        lines.append(f"  {'bearpaw/pytorch-pose':<22}{_fmt(result['pck_bearpaw']['overall']):>7}"
                     f"   (mean over {result['pck_bearpaw']['batches']} batches of per-joint means)")
    keypoint_aps = _keypoint_ap_columns(result)
    lines.append(f"{'joint':<16}{'all':>7}{'v=2':>7}{'v=1':>7}{'n':>8}"
                 + "".join(f"{title:>10}" for title, _ in keypoint_aps))
    for name in pcks["all"]["per_joint"]:
        lines.append(f"{name:<16}{_fmt(pcks['all']['per_joint'][name]):>7}{_fmt(pcks['v2']['per_joint'][name]):>7}"
                     f"{_fmt(pcks['v1']['per_joint'][name]):>7}{pcks['all']['per_joint_counted'][name]:>8}"
                     + "".join(f"{_fmt(aps.get(name)):>10}" for _, aps in keypoint_aps))
    if keypoint_aps:
        lines.append("  (PCK: ground-truth boxes; " + ", ".join(
            f"{title}: keypoint AP, {label}" for title, label in _keypoint_ap_labels(result)) + ")")
    if "pck_curve" in result:
        curve = result["pck_curve"]
        points = zip(curve["thresholds"], curve["all"])
        lines.append("PCK curve (all): " + "  ".join(f"r={t:g}:{_fmt(v)}" for t, v in points))
    if result.get("coco"):
        lines.append(f"COCO keypoints ({result.get('coco_boxes', 'ground-truth boxes')}): "
                     + "  ".join(f"{name} {_fmt(result['coco'][name])}" for name in COCO_STAT_NAMES))
    if result.get("unreadable"):
        bad = result["unreadable"]
        shown = "; ".join(f"{b['file_name']} ({b['problem']})" for b in bad["first"])
        more = f"; and {bad['images'] - len(bad['first'])} more" if bad["images"] > len(bad["first"]) else ""
        lines.append(f"{bad['images']} unreadable images skipped ({result['skipped']} instances), "
                     f"COCO AP covers the readable ones: {shown}{more}")
    if result.get("size_warnings"):
        warned = result["size_warnings"]
        shown = "; ".join(f"{w['file_name']} ({w['warning']})" for w in warned["first"][:3])
        lines.append(f"{warned['images']} images a pixel off their annotated size, used as decoded "
                     f"({warned['instances']} instances), e.g. {shown}")
    lines += _error_lines(result.get("errors"), result.get("coco_boxes", "ground-truth boxes"))
    detected = result.get("detected_boxes")
    if detected:
        lines.append(f"COCO keypoints ({detected['boxes']}): "
                     + "  ".join(f"{name} {_fmt(detected['coco'][name])}" for name in COCO_STAT_NAMES))
        lines.append(f"  {detected['boxes_evaluated']} of {detected['boxes_in_file']} boxes cropped "
                     f"(min box score {detected['min_box_score']:g}), "
                     f"{detected.get('instances_after_nms', 0)} left after {detected['nms']}, "
                     f"on {detected['images_evaluated']} images; score = {detected['rescoring']}")
        lines += _error_lines(detected.get("errors"), detected["boxes"])
    return "\n".join(lines)


def _keypoint_ap_labels(result: dict) -> list[tuple[str, str]]:
    labels = []
    if result.get("per_keypoint_ap"):
        labels.append(("AP(gt)", result.get("coco_boxes", "ground-truth boxes")))
    if (result.get("detected_boxes") or {}).get("per_keypoint_ap"):
        labels.append(("AP(det)", result["detected_boxes"]["boxes"]))
    return labels


def _keypoint_ap_columns(result: dict) -> list[tuple[str, dict]]:
    columns = {"AP(gt)": result.get("per_keypoint_ap"),
               "AP(det)": (result.get("detected_boxes") or {}).get("per_keypoint_ap")}
    return [(title, aps) for title, aps in columns.items() if aps]


def _error_lines(errors: dict | None, label: str) -> list[str]:
    if not errors:
        return []
    shares = "  ".join(f"{kind} {_fmt(share)}" for kind, share in errors["overall_fraction"].items())
    fixed = "  ".join(f"{kind} {_fmt(ap)}" for kind, ap in errors["ap_if_fixed"].items())
    return [f"  keypoint errors ({label}): {shares}",
            f"    over {errors['matched_predictions']} predictions matched to a person "
            f"({errors['unmatched_predictions']} unmatched, {errors['unmatched_people']} people without one)",
            f"  AP if fixed: {fixed}  (as is {_fmt(errors['ap'])})"]
