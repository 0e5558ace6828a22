"""Person crops and targets: the pixel convention holds through crop, heatmap and back."""

import numpy as np
import pytest
import torch

from hgpose.data.coco import load_split
from hgpose.data.dataset import PersonDataset
from hgpose.data.images import _reduction
from hgpose.data.transforms import frame_to_image, image_to_frame
from hgpose.model.heatmaps import render_heatmaps


def decode_peaks(heatmaps: torch.Tensor) -> torch.Tensor:
    """(B, K, H, W) -> (B, K, 2): argmax plus a quarter pixel toward the larger neighbour."""
    b, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(b, k, -1).argmax(-1)
    y, x = flat // w, flat % w
    coords = torch.stack([x, y], -1).float()
    padded = torch.nn.functional.pad(heatmaps, (1, 1, 1, 1))
    bi, ki = torch.meshgrid(torch.arange(b), torch.arange(k), indexing="ij")
    yp, xp = y + 1, x + 1
    dx = padded[bi, ki, yp, xp + 1] - padded[bi, ki, yp, xp - 1]
    dy = padded[bi, ki, yp + 1, xp] - padded[bi, ki, yp - 1, xp]
    return coords + 0.25 * torch.stack([dx.sign(), dy.sign()], -1)


@pytest.fixture(scope="module")
def synth_train(synth_dataset):
    return PersonDataset(load_split(synth_dataset, "train2017"), input_size=64, cache="off")


def test_sample_has_the_promised_fields(synth_train):
    sample = synth_train[3]
    assert sample["image"].shape == (3, 64, 64) and sample["image"].dtype == torch.uint8
    assert sample["keypoints"].shape == (17, 2) and sample["keypoints"].dtype == torch.float32
    assert sample["visibility"].shape == (17,) and sample["visibility"].dtype == torch.int64
    assert sample["index"].item() == 3 and sample["valid"].item() is True
    assert synth_train.heatmap_size == 16 and synth_train.boxes.shape == (len(synth_train), 3)
    assert not synth_train.using_cache


def test_keypoint_round_trip_image_heatmap_image(synth_train):
    index = synth_train.index
    labelled = index.keypoints[..., 2] > 0
    back = frame_to_image(synth_train.keypoints.astype(np.float64), synth_train.boxes, synth_train.heatmap_size)
    assert np.abs(back - index.keypoints[..., :2])[labelled].max() < 0.01
    # heatmap pixel h covers input pixels 4h .. 4h+3: input u = 4 (h + 0.5) - 0.5
    in_input = image_to_frame(index.keypoints[..., :2], synth_train.boxes, synth_train.input_size)
    assert np.abs(4 * (synth_train.keypoints + 0.5) - 0.5 - in_input)[labelled].max() < 1e-3


def test_rendered_target_peaks_at_the_keypoint(synth_train):
    keypoints = torch.from_numpy(synth_train.keypoints)
    visibility = torch.from_numpy(synth_train.visibility)
    heatmaps, weights = render_heatmaps(keypoints, visibility, synth_train.heatmap_size)
    on = weights > 0
    assert on.sum() > 100
    error = (decode_peaks(heatmaps) - keypoints).abs()[on]
    assert error.max() <= 0.5
    assert heatmaps[~on].abs().max() == 0


def test_visibility_is_zero_off_the_heatmap(tiny_coco):
    image = tiny_coco.add_image(width=200, height=150)
    keypoints = [60, 60, 2] * 17
    keypoints[0:3] = [2, 2, 2]  # inside the image, outside the person's crop
    tiny_coco.add_person(image, bbox=[50, 50, 20, 20], keypoints=keypoints)
    dataset = PersonDataset(load_split(tiny_coco.write(), "train2017"), 64, cache="off")
    sample = dataset[0]
    assert sample["visibility"][0] == 0 and (sample["visibility"][1:] == 2).all()


@pytest.mark.parametrize("side, factor", [(40, 1), (300, 4)])
def test_crop_contains_the_keypoint_pixel(tiny_coco, side, factor):
    """A bright dot at a known keypoint lands on the crop pixel the convention maps it to, both for
    full-size decoding and for reduced (1/f) JPEG decoding of large people."""
    point = np.array([173.5, 141.5])  # the centre of pixel (173, 141)
    pixels = np.zeros((300, 400, 3), np.uint8)
    r = 0 if factor == 1 else factor  # big enough to survive the reduction
    pixels[141 - r : 142 + r, 173 - r : 174 + r] = 255
    bbox = [point[0] - side / 3, point[1] - side / 2.5, side * 0.8, side * 0.8]
    tiny_coco.add_person(tiny_coco.add_image(400, 300, pixels=pixels), bbox=bbox,
                         keypoints=list(point) + [2] + [0, 0, 0] * 16)
    dataset = PersonDataset(load_split(tiny_coco.write(), "train2017"), 64, cache="off")
    assert _reduction(dataset.boxes[0, 2], 64) == factor
    crop = dataset[0]["image"].numpy().astype(np.float64).sum(0)
    expected = image_to_frame(point, dataset.boxes[0], 64)[0]
    brightest = np.array(np.unravel_index(crop.argmax(), crop.shape)[::-1])
    assert np.abs(brightest - expected).max() <= 1.0
    # and the centre of the bright blob (robust to a flat top) sits on it even more closely
    ys, xs = np.nonzero(crop > crop.max() / 2)
    weights = crop[ys, xs]
    centre = np.array([np.average(xs, weights=weights), np.average(ys, weights=weights)])
    assert np.abs(centre - expected).max() <= 0.5


def test_crop_is_rgb(tiny_coco):
    red_in_bgr = np.zeros((120, 160, 3), np.uint8)
    red_in_bgr[..., 2] = 255
    tiny_coco.add_person(tiny_coco.add_image(pixels=red_in_bgr))
    dataset = PersonDataset(load_split(tiny_coco.write(), "train2017"), 64, cache="off")
    r, g, b = dataset[0]["image"][:, 32, 32].tolist()
    assert r > 240 and g < 15 and b < 15
