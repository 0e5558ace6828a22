"""How joint information forms over training: the per-pixel probes, CKA against the final model, the skip/low
balance and per-joint PCK at the per-epoch checkpoints a training run keeps
(RUN/checkpoints/epoch_NNN.safetensors, with RUN/metrics.csv for the learning rate)."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hgpose.explore.analyses import branch_contributions, decode, heatmaps
from hgpose.explore.probes import linear_cka, model_pixel_probes, pooled_stages
from hgpose.model.weights import load_model
from hgpose.runtime.files import UserError

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


def training_trajectory(run_dir, images, keypoints, visibility, every: int = DEFAULT_EVERY, device="cpu",
                        batch_size: int = 16, folds: int = 5, progress: bool = False) -> TrainingTrajectory:
    """Run the per-epoch analyses on crops (N, 3, S, S) with their truth (heatmap coordinates)."""
    from hgpose.evaluation.pck import pck, seed_normalizer
    from hgpose.runtime.progress import progress_bar

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
    return TrainingTrajectory(np.array(epochs), lr_drop_epoch(run_dir), stages, np.stack([p.pck for p in probed]),
                              probed[-1].chance, cka, np.stack(shares), np.stack(per_joint), np.array(pooled),
                              len(images))
