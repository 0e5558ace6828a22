"""The third edition's instruments on cases with known answers: network dissection, the effective receptive
field, facing from keypoints, and per-stack PCK."""

from __future__ import annotations

import numpy as np
import pytest

from hgpose.coco_names import KEYPOINT_NAMES
from hgpose.explore.analyses import target_heatmaps
from hgpose.explore.dissection import PART_NAMES, detectors, dissect, iou_interval
from hgpose.explore.probes import array_batches

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _people(n=48, side=16, seed=0):
    """Keypoints spread over the heatmap (all labelled), so that no place of the crop belongs to one joint."""
    rng = np.random.default_rng(seed)
    keypoints = rng.uniform(2.5, side - 3.5, size=(n, len(KEYPOINT_NAMES), 2))
    return keypoints, np.full((n, len(KEYPOINT_NAMES)), 2)


def test_dissection_finds_a_channel_that_copies_a_joints_target_and_not_a_random_one():
    keypoints, visibility = _people()
    joint = KEYPOINT_NAMES.index("left_wrist")
    rng = np.random.default_rng(1)
    targets = target_heatmaps(keypoints, visibility, 16)
    # channel 0 copies the wrist's target map, channel 1 is noise, channel 2 a fixed blob at the centre
    blob = np.exp(-((np.mgrid[0:16, 0:16] - 7.5) ** 2).sum(0) / 8.0)
    shape = (len(keypoints), 16, 16)
    stage = np.stack([targets[:, joint], rng.normal(size=shape), blob + 0.01 * rng.normal(size=shape)],
                     axis=1).astype(np.float32)
    noise = rng.normal(size=stage.shape).astype(np.float32)
    trained = dissect(lambda: array_batches({"hand-built": stage}, 16), keypoints, visibility, 16)
    random = dissect(lambda: array_batches({"hand-built": noise}, 16), keypoints, visibility, 16)
    iou = trained.iou(0)
    assert iou[0, joint] > 0.85 and np.nanargmax(iou[0]) == joint
    assert np.nanmax(iou[1]) < 0.2
    low, high = iou_interval(trained, 0, 0, joint)
    assert low <= iou[0, joint] <= high and high - low < 0.1
    found = detectors(trained, random)[0]
    assert [(d.channel, d.part) for d in found] == [(0, PART_NAMES[joint])]
    # the centre blob overlaps the shuffled regions as well as the true ones: chance, not a detector
    shuffled = trained.iou(0, shuffled=True)
    assert shuffled[0, joint] < 0.2 and abs(shuffled[2].max() - iou[2].max()) < 0.1
