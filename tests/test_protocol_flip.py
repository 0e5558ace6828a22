"""The flip test's realignment under the pixel-centre convention, and DARK decoding."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hgpose.data.transforms import crop_box_from_bbox, crop_image, image_to_frame
from hgpose.keypoints import flip_permutation
from hgpose.model.heatmaps import decode_heatmaps, flip_back, flip_test, render_heatmaps
from hgpose.model.hourglass import ModelConfig, build_model
from hgpose.runtime.files import UserError

INPUT, HEATMAP = 64, 16


def mirror_box(box, image_width):
    """The crop box (x0, y0, side) of the mirrored image that shows the mirrored crop."""
    x0, y0, side = box
    return np.array([image_width - x0 - side, y0, side])


def test_mirrored_crop_is_the_flipped_crop():
    # the input side of the convention: cropping the mirrored image gives the mirrored crop
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (90, 130, 3), dtype=np.uint8)
    box = crop_box_from_bbox([30.3, 12.7, 41.0, 57.5])
    crop = crop_image(image, box, INPUT).astype(np.int16)
    mirrored = crop_image(np.ascontiguousarray(image[:, ::-1]), mirror_box(box, 130), INPUT).astype(np.int16)
    assert np.abs(mirrored[:, ::-1] - crop).max() <= 1  # bilinear rounding only


def test_gaussian_targets_of_a_keypoint_and_its_mirror_decode_to_the_same_point():
    # a left keypoint in an image, and the same keypoint in the mirrored image (x -> W - x), where it
    # is the right one: the mirrored crop's heatmaps, flipped back, decode to the same sub-pixel point
    width = 130
    box = crop_box_from_bbox([30.3, 12.7, 41.0, 57.5])
    point = np.array([[47.31, 33.86]])
    mirrored_point = np.array([[width - point[0, 0], point[0, 1]]])
    h = image_to_frame(point, box, HEATMAP)[0]
    h_mirrored = image_to_frame(mirrored_point, mirror_box(box, width), HEATMAP)[0]
    np.testing.assert_allclose(h_mirrored, [HEATMAP - 1 - h[0], h[1]], atol=1e-9)  # pixel h -> H-1-h

    left, right = 5, 6  # left_shoulder, right_shoulder
    keypoints, mirrored_keypoints = torch.zeros(1, 17, 2), torch.zeros(1, 17, 2)
    visibility, mirrored_visibility = torch.zeros(1, 17), torch.zeros(1, 17)
    keypoints[0, left], visibility[0, left] = torch.tensor(h), 2
    mirrored_keypoints[0, right], mirrored_visibility[0, right] = torch.tensor(h_mirrored), 2
    target, _ = render_heatmaps(keypoints, visibility, HEATMAP)
    mirrored_target, _ = render_heatmaps(mirrored_keypoints, mirrored_visibility, HEATMAP)
    realigned = flip_back(mirrored_target)
    torch.testing.assert_close(realigned, target, atol=1e-6, rtol=0)
    for method in ("quarter", "dark"):
        expected, _ = decode_heatmaps(target, method)
        got, _ = decode_heatmaps(realigned, method)
        torch.testing.assert_close(got[0, left], expected[0, left], atol=1e-5, rtol=0)
    dark, _ = decode_heatmaps(realigned, "dark")
    np.testing.assert_allclose(dark[0, left].numpy(), h, atol=0.02)  # and it is the true point


def test_flip_permutation_swaps_left_and_right():
    perm = flip_permutation(17)
    assert perm[0] == 0 and perm[1] == 2 and perm[2] == 1 and perm[15] == 16
    assert flip_permutation(5) == list(range(5))


def test_flip_test_of_a_real_model_commutes_with_mirroring(one_torch_thread):
    # for any model: flip_test(mirror(x)) = mirror + swap of flip_test(x); a misaligned flip-back
    # (say a one-pixel shift) breaks this identity
    model = build_model(ModelConfig(features=16, input_size=32, depth=2), seed=0).eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = flip_test(model, x)
        mirrored = flip_test(model, x.flip(-1))
    torch.testing.assert_close(mirrored, flip_back(plain), atol=1e-5, rtol=1e-5)


class MirrorSymmetricModel(torch.nn.Module):
    """A model that commutes with mirroring: x-symmetric 3x3 kernels, 4x4 average pooling (heatmap
    pixel h = input pixels 4h..4h+3, as in hgpose) and the same head for both joints of a pair."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        kernel = torch.randn(8, 3, 3, 3, generator=g)
        self.register_buffer("kernel", kernel + kernel.flip(-1))
        head = torch.randn(17, 8, generator=g)
        for left, right in ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)):
            head[right] = head[left]
        self.register_buffer("head", head)

    def forward(self, x):
        features = F.avg_pool2d(torch.relu(F.conv2d(x, self.kernel, padding=1)), 4)
        return torch.einsum("kc,nchw->nkhw", self.head, features)


def test_flip_test_on_a_mirror_symmetric_input_equals_the_plain_output():
    model = MirrorSymmetricModel()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    x = (x + x.flip(-1)) / 2  # a mirror-symmetric input
    plain = model(x)
    torch.testing.assert_close(flip_test(model, x), plain, atol=1e-5, rtol=1e-5)
    # the check has teeth: a flip-back off by one heatmap pixel does not give the plain output
    shifted = (plain + torch.roll(flip_back(model(x.flip(-1))), 1, dims=-1)) / 2
    assert (shifted - plain).abs().max() > 1e-2


@pytest.mark.parametrize("size", [16, 64])
def test_dark_decoding_recovers_sub_pixel_peaks(size):
    rng = np.random.default_rng(0)
    points = torch.tensor(rng.uniform(2, size - 3, (4, 17, 2)), dtype=torch.float32)
    heatmaps, _ = render_heatmaps(points, torch.full((4, 17), 2), size)
    dark, confidence = decode_heatmaps(heatmaps, "dark")
    quarter, _ = decode_heatmaps(heatmaps, "quarter")
    dark_error = (dark - points).norm(dim=-1)
    quarter_error = (quarter - points).norm(dim=-1)
    assert dark_error.mean() < 0.02 and dark_error.max() < 0.1  # the mirrored border blur costs a little
    assert quarter_error.mean() > 5 * dark_error.mean()
    torch.testing.assert_close(confidence, heatmaps.amax(dim=(2, 3)))


def test_dark_decoding_at_the_border_and_on_empty_maps():
    heatmaps = torch.zeros(1, 3, 16, 16)
    heatmaps[0, 0, 0, 5] = 1.0  # a peak on the top row: integer argmax, no Taylor step
    heatmaps[0, 2] = torch.rand(16, 16, generator=torch.Generator().manual_seed(0))  # noise: finite, within a pixel
    coords, _ = decode_heatmaps(heatmaps, "dark")
    assert torch.isfinite(coords).all()
    assert coords[0, 0].tolist() == [5.0, 0.0]
    with pytest.raises(UserError, match="--decode"):
        decode_heatmaps(heatmaps, "median")
