"""Device-side augmentation: geometry of pixels and keypoints, determinism, the off path, exact resume."""

import signal
import subprocess

import pytest
import torch
import yaml
from safetensors.torch import load_file

import hgpose.train.loop as train_module
from hgpose.cli import main
from hgpose.data.augment import AugmentConfig, BatchAugment, draw_uniforms
from hgpose.keypoints import KEYPOINT_NAMES, flip_permutation
from hgpose.model.heatmaps import heatmap_loss, render_heatmaps
from hgpose.model.hourglass import to_model_input
from hgpose.runtime.files import UserError
from hgpose.runtime.precision import autocast
from hgpose.train.config import TrainConfig
from hgpose.train.loop import train
from test_train import (
    TINY_FLAGS,
    TRAIN_COMMAND,
    quick_config,
    read_metrics,
    resume_and_compare,
    start_paused_training,
    subprocess_env,
    wait_until_paused,
)

LEFT_WRIST, RIGHT_WRIST = KEYPOINT_NAMES.index("left_wrist"), KEYPOINT_NAMES.index("right_wrist")
ONLY_FLIP = AugmentConfig(enabled=True, flip=1.0, rotate_p=0.0, scale_min=1.0, scale_max=1.0)


def keypoints_near_centre(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return size / 2 - 0.5 + (torch.rand(batch, 17, 2, generator=g) - 0.5) * size * 0.4


def test_flip_twice_is_the_identity():
    augment = BatchAugment(ONLY_FLIP, seed=0, epoch=1, heatmap_size=16)
    images = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    keypoints, visibility = keypoints_near_centre(4, 16), torch.randint(0, 3, (4, 17))
    once = augment(images, keypoints, visibility, torch.arange(4))
    twice = augment(*once, torch.arange(4))
    assert not torch.allclose(once[0], images)  # the first flip did something
    torch.testing.assert_close(twice[0], images, atol=1e-5, rtol=0)
    torch.testing.assert_close(twice[1], keypoints, atol=1e-5, rtol=0)
    assert torch.equal(twice[2], visibility)


def test_a_flipped_left_wrist_target_sits_where_the_right_wrist_was_in_the_flipped_image():
    size, heatmap = 64, 16
    keypoints = keypoints_near_centre(1, heatmap)
    keypoints[0, LEFT_WRIST], keypoints[0, RIGHT_WRIST] = torch.tensor([4.0, 6.0]), torch.tensor([11.0, 9.0])
    images = torch.zeros(1, 1, size, size)
    u, v = (4 * (keypoints[0, RIGHT_WRIST] + 0.5) - 0.5).round().long().tolist()  # heatmap -> input pixel
    images[0, 0, v - 1 : v + 2, u - 1 : u + 2] = 1.0  # a bright spot on the right wrist
    flipped, moved, visibility = BatchAugment(ONLY_FLIP, 0, 1, heatmap)(images, keypoints, torch.full((1, 17), 2),
                                                                          torch.arange(1))
    targets, weights = render_heatmaps(moved, visibility, heatmap)
    peak = targets[0, LEFT_WRIST].flatten().argmax()
    assert (peak % heatmap, peak // heatmap) == (heatmap - 1 - 11, 9)  # mirrored x, same y
    assert weights[0, LEFT_WRIST] == 1
    # the bright spot went where the wrist went, in input pixels: mirrored about the crop's centre line
    to_input = lambda h: 4 * (h + 0.5) - 0.5  # noqa: E731
    before, after = centroid(images[0, 0]), centroid(flipped[0, 0])
    torch.testing.assert_close(after - to_input(moved[0, LEFT_WRIST]),
                               (before - to_input(keypoints[0, RIGHT_WRIST])) * torch.tensor([-1.0, 1.0]))


def centroid(image: torch.Tensor) -> torch.Tensor:
    """(x, y) of an image's brightness centroid, pixel-centre coordinates."""
    grid = torch.arange(image.shape[-1], dtype=torch.float32)
    return torch.stack([(image.sum(0) * grid).sum(), (image.sum(1) * grid).sum()]) / image.sum()


def test_flip_permutation_swaps_every_left_right_pair():
    order = flip_permutation()
    assert sorted(order) == list(range(17)) and order[0] == 0
    for joint, partner in enumerate(order):
        if joint:
            assert KEYPOINT_NAMES[joint].split("_", 1)[1] == KEYPOINT_NAMES[partner].split("_", 1)[1]
            assert KEYPOINT_NAMES[joint] != KEYPOINT_NAMES[partner]


@pytest.mark.parametrize("scale", [0.8, 1.0, 1.2])
def test_rotation_and_scale_move_targets_with_the_pixels(scale):
    # render targets at full resolution, warp them as pixels, and compare with the targets rendered from
    # the warped keypoints (a Gaussian scaled by s has sigma * s; a rotated one is the same Gaussian)
    size, sigma = 64, 2.0
    config = AugmentConfig(enabled=True, flip=0.5, rotate=30, rotate_p=1.0, scale_min=scale, scale_max=scale)
    keypoints = keypoints_near_centre(8, size)
    visibility = torch.full((8, 17), 2)
    rendered, _ = render_heatmaps(keypoints, visibility, size, sigma=sigma)
    augment = BatchAugment(config, seed=3, epoch=2, heatmap_size=size)
    warped, moved, moved_visibility = augment(rendered, keypoints, visibility, torch.arange(8))
    assert (moved_visibility == 2).all()
    expected, _ = render_heatmaps(moved, moved_visibility, size, sigma=sigma * scale)
    # flipped samples swap joints: the warped pixels of joint j are the target of its partner
    flipped = draw_uniforms(3, 2, torch.arange(8))[:, 0] < 0.5
    assert flipped.any() and (~flipped).any()
    order = torch.tensor(flip_permutation())
    warped = torch.where(flipped[:, None, None, None], warped[:, order], warped)
    # bilinear resampling of a sigma-2 Gaussian is off by a few hundredths near its peak; a half-pixel
    # error in the geometry would be ~0.15
    assert (warped - expected).abs().max() < 0.08
    grid = torch.arange(size, dtype=torch.float32)
    mass = warped.sum((-1, -2))
    centres = torch.stack([(warped.sum(-2) * grid).sum(-1), (warped.sum(-1) * grid).sum(-1)], -1) / mass[..., None]
    torch.testing.assert_close(centres, moved, atol=0.02, rtol=0)  # the warped peaks sit on the moved keypoints
    assert (rendered - expected).abs().max() > 0.5  # the targets did move


def test_a_keypoint_pushed_off_the_heatmap_gets_no_target():
    config = AugmentConfig(enabled=True, flip=0.0, rotate_p=0.0, scale_min=1.25, scale_max=1.25)
    keypoints = torch.tensor([[[0.5, 0.5], [7.5, 7.5]] + [[7.5, 7.5]] * 15])  # a corner and the centre
    _, moved, visibility = BatchAugment(config, 0, 1, 16)(torch.zeros(1, 3, 64, 64), keypoints,
                                                          torch.full((1, 17), 2), torch.arange(1))
    assert visibility[0, 0] == 0 and (visibility[0, 1:] == 2).all()
    _, weights = render_heatmaps(moved, visibility, 16)
    assert weights[0, 0] == 0


def test_half_body_zooms_onto_the_chosen_joints_and_pixels_follow_across_resolutions():
    # keypoints in heatmap coordinates (16), pixels at input resolution (64): a translation (the
    # half-body centre) must move both by the same amount in their own pixel units
    config = AugmentConfig(enabled=True, flip=0.5, rotate_p=0.0, scale_min=1.0, scale_max=1.0, half_body=1.0)
    heatmap, size = 16, 64
    keypoints = keypoints_near_centre(16, heatmap, seed=4)
    to_input = lambda h: 4 * (h + 0.5) - 0.5  # noqa: E731
    spots, _ = render_heatmaps(to_input(keypoints), torch.full((16, 17), 2), size, sigma=1.5)
    warped, moved, visibility = BatchAugment(config, 0, 1, heatmap)(spots, keypoints, torch.full((16, 17), 2),
                                                                     torch.arange(16))
    spread = lambda k: (k - k.mean(1, keepdim=True)).norm(dim=-1).mean(1)  # noqa: E731
    assert (spread(moved) > spread(keypoints) * 1.2).all()  # every sample zoomed in
    flipped = draw_uniforms(0, 1, torch.arange(16))[:, 0] < 0.5
    warped = torch.where(flipped[:, None, None, None], warped[:, torch.tensor(flip_permutation())], warped)
    margin = 4 * 1.5 * 2  # 4 sigma at the largest zoom: these spots are whole
    kept = ((to_input(moved) > margin) & (to_input(moved) < size - 1 - margin)).all(-1)
    assert kept.sum() > 100 and (visibility[kept] > 0).all()
    grid = torch.arange(size, dtype=torch.float32)
    centres = torch.stack([(warped.sum(-2) * grid).sum(-1), (warped.sum(-1) * grid).sum(-1)], -1)
    centres = centres / warped.sum((-1, -2))[..., None]
    torch.testing.assert_close(centres[kept], to_input(moved)[kept], atol=0.03, rtol=0)


def test_draws_depend_on_seed_epoch_and_sample_alone():
    a = draw_uniforms(0, 1, torch.tensor([5, 9, 2]))
    assert torch.equal(a[1], draw_uniforms(0, 1, torch.tensor([9]))[0])  # not on the batch it is in
    assert not torch.equal(a[0], a[1])
    assert not torch.equal(a, draw_uniforms(0, 2, torch.tensor([5, 9, 2])))
    assert not torch.equal(a, draw_uniforms(1, 1, torch.tensor([5, 9, 2])))
    state = torch.get_rng_state()
    BatchAugment(ONLY_FLIP, 0, 1, 16)(torch.zeros(2, 3, 64, 64), torch.zeros(2, 17, 2), torch.ones(2, 17),
                                      torch.arange(2))
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is untouched


def seed_protocol_step(model, optimizer, batch, device, precision, heatmap_size, channels_last=True, **_):
    """train_step as it was before augmentation existed (commit a072392), kept here as the reference."""
    images = to_model_input(batch["image"].to(device, non_blocking=True))
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    keypoints = batch["keypoints"].to(device, non_blocking=True)
    visibility = batch["visibility"].to(device, non_blocking=True)
    valid = batch["valid"].to(device, non_blocking=True)
    targets, _ = render_heatmaps(keypoints, visibility, heatmap_size)
    with autocast(device, precision):
        outputs = model(images, all_stacks=True)
    loss = heatmap_loss(outputs, targets, valid)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def test_augmentation_off_reproduces_the_seed_protocol_bit_for_bit(synth_dataset, tmp_path, monkeypatch):
    options = dict(epochs=1, subset=24)
    # off, but with every other augment value changed: none of them may matter
    off = train(quick_config(synth_dataset, tmp_path / "off", **options,
                             augment=AugmentConfig(flip=1.0, rotate=90, rotate_p=1.0, scale_min=0.5, half_body=1.0)))
    on = train(quick_config(synth_dataset, tmp_path / "on", **options, augment=AugmentConfig(enabled=True)))
    with monkeypatch.context() as patch:
        patch.setattr(train_module, "train_step", seed_protocol_step)
        reference = train(quick_config(synth_dataset, tmp_path / "reference", **options))
    weights = {name: load_file(str(run / "last.safetensors")) for name, run in
               (("off", off), ("on", on), ("reference", reference))}
    assert all(torch.equal(weights["off"][k], weights["reference"][k]) for k in weights["reference"])
    assert not all(torch.equal(weights["on"][k], weights["reference"][k]) for k in weights["reference"])
    strip = lambda rows: [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in rows]  # noqa: E731
    assert strip(read_metrics(off)) == strip(read_metrics(reference))
    assert "augmentation off" in (off / "train.log").read_text()
    assert "augmentation flip 0.5, rotate +-30 deg p 0.4, scale 0.75-1.25" in (on / "train.log").read_text()


def test_cli_flags_are_recorded_in_config_yaml_and_old_configs_load(synth_dataset, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--data", str(synth_dataset), "--out", str(run), "--epochs", "1", "--subset", "8",
            "--batch-size", "8", "--workers", "0", "--cache", "off", "--no-progress", "--no-report", *TINY_FLAGS]
    assert main([*args, "--augment", "--aug-flip", "0.25", "--aug-scale", "0.9,1.1", "--aug-half-body", "0.3"]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["augment"] == {"enabled": True, "flip": 0.25, "rotate": 30.0, "rotate_p": 0.4,
                                "scale_min": 0.9, "scale_max": 1.1, "half_body": 0.3}
    assert "half-body 0.3" in (run / "train.log").read_text()
    del saved["augment"]  # a run from before augmentation existed
    old = TrainConfig.from_mapping(saved, "old.yaml")
    assert old.augment == AugmentConfig() and not old.augment.enabled


@pytest.mark.parametrize("flags, message", [
    (["--aug-flip", "0.3"], "--aug-flip given without --augment"),
    (["--augment", "--aug-scale", "1.3"], "--aug-scale expects LO,HI, got '1.3'"),
    (["--augment", "--aug-scale", "1.3,0.7"], "scale must be LO,HI with 0 < LO <= HI"),
    (["--augment", "--aug-flip", "1.5"], "flip must be a probability in [0, 1]"),
])
def test_bad_augment_flags_are_one_line_errors(synth_dataset, tmp_path, capsys, flags, message):
    code = main(["train", "--data", str(synth_dataset), "--out", str(tmp_path / "run"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_bad_augment_block_in_a_config_file_names_the_file(tmp_path):
    with pytest.raises(UserError, match=r"conf\.yaml: unknown augment option\(s\) mirror"):
        TrainConfig.from_mapping({"data": "x", "augment": {"mirror": 0.5}}, "conf.yaml")
    with pytest.raises(UserError, match=r"conf\.yaml: augment.flip must be float"):
        TrainConfig.from_mapping({"data": "x", "augment": {"flip": "often"}}, "conf.yaml")


@pytest.mark.slow
def test_resume_after_sigkill_with_augmentation_is_bit_identical(synth_dataset, tmp_path):
    def args(out):
        return ["--data", str(synth_dataset), "--out", str(out), "--epochs", "2", "--batch-size", "8",
                "--subset", "64", "--workers", "0", "--cache", "off", "--no-progress", "--no-report", *TINY_FLAGS,
                "--augment", "--aug-half-body", "0.3"]

    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert subprocess.run([*TRAIN_COMMAND, *args(reference)], env=subprocess_env(), capture_output=True).returncode == 0
    proc, paused, _ = start_paused_training(args(killed), killed, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until_paused(proc, paused)  # one step into epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(read_metrics(killed)) == 1, "the kill must land in epoch 2"
    resume_and_compare(killed, reference)
