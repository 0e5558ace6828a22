"""Training curves where people look at them: TensorBoard event files in RUN_DIR/tensorboard
(`tensorboard --logdir runs`), written by rank 0 when the `tensorboard` package is installed.

One step per epoch: train loss, val loss, val PCK, learning rate, training images/s and epoch
seconds (the metrics.csv row, value for value), and a few validation crops with the predicted (green
skeleton) and true (white rings) keypoints. The events of an epoch are flushed before the epoch's
resume point (last.safetensors) is saved, and a resumed run's writer purges every event from its
first epoch on: a run killed at any moment and resumed has each epoch once, never twice.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from hgpose.draw import draw_pose
from hgpose.geometry import heatmap_to_input
from hgpose.model.heatmaps import decode_heatmaps
from hgpose.model.hourglass import to_model_input
from hgpose.runtime.precision import autocast

TENSORBOARD_DIR = "tensorboard"
SCALARS = (("train_loss", "loss/train"), ("val_loss", "loss/val"), ("val_pck", "pck/val"), ("lr", "lr"),
           ("epoch_seconds", "time/epoch_seconds"))
IMAGES_PER_SECOND = "speed/train_images_per_second"
CROPS = "val/crops"
SHOWN_CROPS = 4


class TensorBoardLog:
    def __init__(self, run_dir: Path, first_epoch: int, resumed: bool):
        from torch.utils.tensorboard import SummaryWriter  # the optional tensorboard package

        # purge_step: TensorBoard drops what an earlier session logged from this epoch on
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / TENSORBOARD_DIR),
                                    purge_step=first_epoch if resumed else None)

    def epoch(self, row: dict, images_per_second: float, crops: np.ndarray | None) -> None:
        step = int(row["epoch"])
        for column, tag in SCALARS:
            self.writer.add_scalar(tag, row[column], step)
        self.writer.add_scalar(IMAGES_PER_SECOND, images_per_second, step)
        if crops is not None and len(crops):
            self.writer.add_images(CROPS, crops, step, dataformats="NHWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_tensorboard(run_dir: Path, enabled: bool, first_epoch: int, resumed: bool, log) -> TensorBoardLog | None:
    """The run's TensorBoard log, or None: turned off, or the package is not installed (said once)."""
    if not enabled:
        return None
    if importlib.util.find_spec("tensorboard") is None:
        log("no TensorBoard event files: the tensorboard package is not installed "
            "(pip install 'hgpose[tensorboard]', or --no-tensorboard to silence this)")
        return None
    return TensorBoardLog(run_dir, first_epoch, resumed)


@torch.no_grad()
def validation_crops(model, dataset, device, precision: str, count: int = SHOWN_CROPS) -> np.ndarray:
    """The first `count` validation crops (N, S, S, 3) uint8 with the model's keypoints drawn over the
    true ones. Eval mode, no gradient: the model, its batch-norm statistics and every RNG are untouched."""
    samples = [dataset[i] for i in range(min(count, len(dataset)))]
    if not samples:
        return np.zeros((0, 1, 1, 3), np.uint8)
    images = torch.stack([s["image"] for s in samples])
    was_training = model.training
    model.eval()
    try:
        with autocast(device, precision):
            heatmaps = model(to_model_input(images.to(device)))
    finally:
        model.train(was_training)
    coords, confidence = decode_heatmaps(heatmaps.float())
    drawn = []
    for sample, points, scores in zip(samples, coords.cpu().numpy(), confidence.cpu().numpy()):
        predicted = np.concatenate([heatmap_to_input(points), scores[:, None]], axis=-1)
        truth = np.concatenate([heatmap_to_input(sample["keypoints"].numpy()),
                                sample["visibility"].numpy()[:, None]], axis=-1)
        drawn.append(draw_pose(sample["image"].permute(1, 2, 0).numpy(), predicted, truth=truth[None]))
    return np.stack(drawn)
