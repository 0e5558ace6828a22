"""How joint information forms over training: the per-pixel probes, CKA against the final model, the skip/low
balance and per-joint PCK at the per-epoch checkpoints a training run keeps
(RUN/checkpoints/epoch_NNN.safetensors, with RUN/metrics.csv for the learning rate)."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hgpose.evaluation.pck import pck, seed_normalizer
from hgpose.explore.analyses import branch_contributions, decode, heatmaps
from hgpose.explore.probes import linear_cka, model_pixel_probes, pooled_stages
from hgpose.model.weights import load_model
from hgpose.runtime.files import UserError
from hgpose.runtime.progress import progress_bar

EPOCH_FILE = re.compile(r"epoch_(\d+)\.safetensors")
DEFAULT_EVERY = 5


def epoch_checkpoints(run_dir) -> dict[int, Path]:
    """{epoch: path} of RUN/checkpoints/epoch_NNN.safetensors, in epoch order."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        raise UserError(f"{folder}: no per-epoch checkpoints folder; --run takes a training run directory")
    found = {int(m.group(1)): path for path in folder.iterdir() if (m := EPOCH_FILE.fullmatch(path.name))}
    if not found:
        raise UserError(f"{folder}: holds no epoch_NNN.safetensors checkpoints")
    return dict(sorted(found.items()))


def chosen_epochs(available, every: int = DEFAULT_EVERY) -> list[int]:
    """The first epoch, every `every`-th epoch and the last one, among those available."""
    available = sorted(available)
    if every < 1:
        raise UserError(f"--every must be >= 1, got {every}")
    return sorted({available[0], available[-1], *(e for e in available if e % every == 0)})


def lr_drop_epoch(run_dir) -> int | None:
    """The first epoch trained at a lower learning rate than the one before it (RUN/metrics.csv), or None."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        return None
    try:
        with path.open(newline="") as f:
            rows = [(int(r["epoch"]), float(r["lr"])) for r in csv.DictReader(f)]
    except (KeyError, ValueError) as exc:
        raise UserError(f"{path}: not a metrics.csv with epoch and lr columns ({exc})") from None
    for (_, previous), (epoch, lr) in zip(rows, rows[1:]):
        if lr < previous:
            return epoch
    return None


@dataclass
class TrainingTrajectory:
    epochs: np.ndarray  # (E,)
    lr_drop: int | None  # first epoch at the lowered learning rate
    stages: list[str]  # (S,)
    probe_pck: np.ndarray  # (E, S, K) held-out PCK of the per-pixel probe (hgpose.explore.probes.pixel_probes)
    probe_chance: np.ndarray  # (K,) the probe's chance PCK (it depends on the samples only)
    cka_to_final: np.ndarray  # (E, S) linear CKA of each stage with the same stage of the last epoch
    skip_share: np.ndarray  # (E, L) skip / (skip + low) RMS per level
    per_joint_pck: np.ndarray  # (E, K)
    pck: np.ndarray  # (E,) pooled
    samples: int
    # CKA of each stage with the same stage at the previous analysed epoch (NaN for the first): unlike the CKA
    # to the last epoch, it is not 1 at any epoch by definition
    cka_to_previous: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # (E, S)
    val_loss: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (E,) from RUN/metrics.csv, NaN unknown
    best_val_loss: float = float("nan")  # the run's lowest validation loss over all its epochs

    def outlying_end(self, factor: float = 3.0) -> bool:
        """Whether the last epoch's validation loss is more than `factor` times the run's best: an endpoint
        that the CKA to the last epoch should not be read against."""
        return bool(len(self.val_loss) and np.isfinite(self.val_loss[-1]) and np.isfinite(self.best_val_loss)
                    and self.val_loss[-1] > factor * self.best_val_loss)


def metrics_column(run_dir, column: str) -> dict[int, float]:
    """{epoch: value} of one column of RUN/metrics.csv ({} when absent or unreadable)."""
    path = Path(run_dir) / "metrics.csv"
    try:
        with path.open(newline="") as f:
            return {int(r["epoch"]): float(r[column]) for r in csv.DictReader(f) if r.get(column) not in (None, "")}
    except (OSError, KeyError, ValueError):
        return {}


def analysed_epoch(run_dir, checkpoint) -> int | None:
    """The epoch of the checkpoint the report analyses: an epoch_NNN file's number, or for RUN/best.safetensors
    the epoch of the best validation PCK in RUN/metrics.csv (how training picks it); else None."""
    if checkpoint is None:
        return None
    name = Path(checkpoint).name
    if (m := EPOCH_FILE.fullmatch(name)) is not None:
        return int(m.group(1))
    if name == "best.safetensors" and Path(checkpoint).resolve().parent == Path(run_dir).resolve():
        pck = metrics_column(run_dir, "val_pck")
        return max(pck, key=pck.get) if pck else None
    return None


def training_trajectory(run_dir, images, keypoints, visibility, every: int = DEFAULT_EVERY, device="cpu",
                        batch_size: int = 16, folds: int = 5, progress: bool = False) -> TrainingTrajectory:
    """Run the per-epoch analyses on crops (N, 3, S, S) with their truth (heatmap coordinates)."""
    checkpoints = epoch_checkpoints(run_dir)
    epochs = chosen_epochs(checkpoints, every)
    features, probed, shares, per_joint, pooled = [], [], [], [], []
    stages: list[str] = []
    for epoch in progress_bar(epochs, desc="epochs", leave=False, disable=not progress):
        model = load_model(checkpoints[epoch], device=torch.device(device))
        stage_features = pooled_stages(model, images, batch_size=batch_size)
        stages = list(stage_features)
        features.append(stage_features)
        probed.append(model_pixel_probes(model, images, keypoints, visibility, folds, batch_size=batch_size))
        shares.append(branch_contributions(model, images, batch_size=batch_size).skip_share)
        coords, _ = decode(heatmaps(model, images, batch_size))
        result = pck(coords, keypoints, visibility, seed_normalizer(model.config.heatmap_size))
        per_joint.append(result.per_joint)
        pooled.append(result.overall)
    final = features[-1]
    cka = np.array([[linear_cka(f[s], final[s]) for s in stages] for f in features])
    previous = np.array([[np.nan if i == 0 else linear_cka(f[s], features[i - 1][s]) for s in stages]
                         for i, f in enumerate(features)])
    losses = metrics_column(run_dir, "val_loss")
    return TrainingTrajectory(np.array(epochs), lr_drop_epoch(run_dir), stages, np.stack([p.pck for p in probed]),
                              probed[-1].chance, cka, np.stack(shares), np.stack(per_joint), np.array(pooled),
                              len(images), previous, np.array([losses.get(e, np.nan) for e in epochs]),
                              min(losses.values()) if losses else float("nan"))
