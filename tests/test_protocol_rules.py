"""The rules of the seed's protocol and of the COCO top-down protocol, each pinned by a small, exact
test whose failure message names the rule and the numbers (issue 25).

Training tests run a tiny model (16x16 heatmaps, so a hard-coded 64 shows) for a few epochs in this
process, with the validation PCK replaced where a rule needs PCK values forced: the patch sits where
the training loop calls the PCK function, and each test asserts that it fired."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import hgpose.train.loop as train_module
from hgpose.keypoints import KEYPOINT_NAMES
from hgpose.model.heatmaps import render_heatmaps
from hgpose.model.hourglass import ModelConfig
from hgpose.train.checkpoint import read_training_state
from hgpose.train.config import TrainConfig
from hgpose.train.loop import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = ModelConfig(depth=2, features=32, input_size=64)  # 16x16 heatmaps: the seed's c is 1.6, not 6.4


def tiny_run_config(data, out, **overrides) -> TrainConfig:
    options = dict(data=str(data), out=str(out), epochs=2, batch_size=8, workers=0, progress=False, cache="off",
                   model=TINY, precision="fp32", val_fraction=0.3)
    return TrainConfig(**(options | overrides))


def read_metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


class ForcedPCK:
    """Stands in for hgpose.train.loop.pck: the real PCK is computed, and its overall figure replaced by the
    next of `values` (one per epoch); `calls` counts the epochs it served."""

    def __init__(self, values):
        self.values, self.calls = list(values), 0
        self.real = train_module.pck

    def __call__(self, *args, **kwargs):
        result = self.real(*args, **kwargs)
        result.overall = self.values[self.calls]
        self.calls += 1
        return result


# --- the seed's PCK in training: c = heatmap side / 10, the same figure `evaluate` gives -------------


def pck_at(coords, gt, visibility, normalizer: float, r: float = 0.5) -> float:
    """The seed's PCK written out from its definition (not hgpose's code): pooled over keypoints
    labelled v = 1 or 2, correct when ||pred - gt|| / c < r."""
    counted = (visibility == 1) | (visibility == 2)
    distances = np.linalg.norm(coords.astype(np.float64) - gt.astype(np.float64), axis=-1) / normalizer
    return float((counted & (distances < r)).sum() / counted.sum())


def test_logged_val_pck_is_the_seed_pck_with_c_a_tenth_of_the_heatmap_side(synth_dataset, tmp_path):
    from hgpose.data.dataset import PersonDataset
    from hgpose.data.loader import make_loader
    from hgpose.evaluate import evaluate_checkpoint, load_eval_index
    from hgpose.evaluation.inference import infer
    from hgpose.model.weights import load_model

    # lr 2e-3: after two epochs some predictions land within a pixel or two, where normalizers differ
    run_dir = train(tiny_run_config(synth_dataset, tmp_path / "run", epochs=2, lr=2e-3))
    side = TINY.input_size // 4
    assert side != 64
    told_apart = []
    for row in read_metrics(run_dir):
        epoch, logged = int(row["epoch"]), float(row["val_pck"])
        checkpoint = run_dir / "checkpoints" / f"epoch_{epoch:03d}.safetensors"
        evaluated = evaluate_checkpoint(checkpoint, synth_dataset, split="val", batch_size=16, device="cpu",
                                        precision="fp32", cache="off", progress=False)["pck"]["all"]
        assert evaluated["normalizer"] == side / 10, (
            f"evaluate's PCK normalizer is {evaluated['normalizer']}; the seed's c is heatmap side / 10 = "
            f"{side} / 10 = {side / 10}")
        assert logged == evaluated["overall"], (
            f"epoch {epoch}: training logged val_pck {logged}, but `evaluate` gives PCK {evaluated['overall']} "
            f"for that epoch's checkpoint on the same held-out split ({evaluated['counted']} keypoints)")
        # the figure itself, from the definition, on this model's 16x16 heatmaps
        dataset = PersonDataset(load_eval_index(synth_dataset, "val", checkpoint), TINY.input_size, cache="off")
        inference = infer(load_model(checkpoint), make_loader(dataset, 16, shuffle=False), device="cpu",
                          precision="fp32", progress=False)
        points = (inference.coords, inference.gt, inference.visibility)
        expected = pck_at(*points, normalizer=side / 10)
        wrong = {"64 / 10": pck_at(*points, normalizer=6.4), f"{side} / 8": pck_at(*points, normalizer=side / 8)}
        assert wrong["64 / 10"] != expected, f"epoch {epoch}: PCK {expected} at c = {side / 10} and at c = 6.4"
        told_apart.append(wrong[f"{side} / 8"] != expected)
        assert logged == expected, (
            f"epoch {epoch}: logged val_pck {logged} is not the seed's PCK with c = {side} / 10 = {side / 10} "
            f"and r = 0.5 ({expected}); with c = 64 / 10 it would be {wrong['64 / 10']}, "
            f"with c = {side} / 8 {wrong[f'{side} / 8']}")
    assert any(told_apart), f"no epoch's held-out predictions tell c = {side} / 10 from c = {side} / 8"


# --- the one-time LR drop: x lr_factor, once, after lr_patience epochs without a new best PCK -------


def test_lr_drops_once_by_a_fifth_after_patience_epochs_without_a_new_best(synth_dataset, tmp_path, monkeypatch):
    lr, epochs = 2.5e-4, 4
    forced = ForcedPCK([0.25] * epochs)  # never a new best after epoch 1: with patience 1, drop after epoch 2
    monkeypatch.setattr(train_module, "pck", forced)
    step_lrs: dict[int, set] = {}  # epoch -> every learning rate the optimizer held at a step
    saved_lrs: list[list[float]] = []  # what last.safetensors holds after each epoch, every param group
    real_step, real_save = train_module.train_step, train_module.save_training_checkpoint
    epoch_now = {"n": 0}

    def recording_step(model, optimizer, *args, **kwargs):
        step_lrs.setdefault(epoch_now["n"], set()).update(g["lr"] for g in optimizer.param_groups)
        return real_step(model, optimizer, *args, **kwargs)

    def recording_save(path, model, optimizer, state):
        written = real_save(path, model, optimizer, state)
        saved_lrs.append([g["lr"] for g in read_training_state(path)["optimizer_param_groups"]])
        epoch_now["n"] = state["epoch"]  # the epoch the next steps belong to
        return written

    epoch_now["n"] = 1
    monkeypatch.setattr(train_module, "train_step", recording_step)
    monkeypatch.setattr(train_module, "save_training_checkpoint", recording_save)
    run_dir = train(tiny_run_config(synth_dataset, tmp_path / "run", epochs=epochs, lr=lr, lr_patience=1,
                                    lr_factor=0.2))
    assert forced.calls == epochs, f"the forced PCK served {forced.calls} of {epochs} epochs"
    rows = read_metrics(run_dir)
    assert [float(r["val_pck"]) for r in rows] == [0.25] * epochs
    expected = [lr, lr] + [lr * 0.2] * (epochs - 2)
    logged = [float(r["lr"]) for r in rows]
    assert logged == expected, (f"LR rule (x0.2 once, after 1 epoch without a new best PCK): metrics.csv lr "
                                f"per epoch {logged}, expected {expected}")
    used = [sorted(step_lrs.get(epoch, set())) for epoch in range(1, epochs + 1)]
    assert used == [[value] for value in expected], (
        f"LR rule: the optimizer stepped with learning rates {used} in epochs 1..{epochs}, expected {expected}")
    saved = [sorted(set(groups)) for groups in saved_lrs]
    assert saved == [[value] for value in expected[1:] + [lr * 0.2]], (
        f"LR rule: last.safetensors after epochs 1..{epochs} holds optimizer learning rates {saved}, "
        f"expected {expected[1:] + [lr * 0.2]} (the rate of the epoch that follows)")
    said = [line for line in (run_dir / "train.log").read_text().splitlines() if "learning rate x0.2" in line]
    assert len(said) == 1 and "dropped after epoch 2, once" in said[0], (
        f"LR rule: train.log should say once that the rate dropped after epoch 2; it says {said}")


# --- the best checkpoint: the epoch with the highest validation PCK, not the lowest loss -----------


def test_best_checkpoint_is_the_epoch_of_highest_val_pck_not_lowest_loss(synth_dataset, tmp_path, monkeypatch):
    forced = ForcedPCK([0.6, 0.2, 0.4])  # epoch 1 best by PCK; its loss (an untrained model's) is the worst
    monkeypatch.setattr(train_module, "pck", forced)
    run_dir = train(tiny_run_config(synth_dataset, tmp_path / "run", epochs=3))
    assert forced.calls == 3, f"the forced PCK served {forced.calls} of 3 epochs"
    rows = read_metrics(run_dir)
    losses = {int(r["epoch"]): float(r["val_loss"]) for r in rows}
    lowest_loss = min(losses, key=losses.get)
    assert lowest_loss != 1, f"val losses {losses}: the best-loss epoch must differ from the best-PCK epoch 1"
    best = load_file(str(run_dir / "best.safetensors"))
    epochs = {e: load_file(str(run_dir / "checkpoints" / f"epoch_{e:03d}.safetensors")) for e in losses}
    same_as = [e for e, weights in epochs.items() if all(torch.equal(best[k], weights[k]) for k in weights)]
    assert same_as == [1], (
        f"best.safetensors must be the epoch of the highest val PCK (epoch 1, PCK 0.6; PCK per epoch "
        f"{[float(r['val_pck']) for r in rows]}), not of the lowest val loss (epoch {lowest_loss}, losses "
        f"{losses}); it equals epoch(s) {same_as}")
    assert "done: best val PCK 0.6000 at epoch 1" in (run_dir / "train.log").read_text()


# --- the flip test: every keypoint to its mirror twin, the whole skeleton realigned ----------------


def mirror_name(name: str) -> str:
    """The name of a keypoint's mirror image: left_X <-> right_X, the nose itself."""
    for side, other in (("left_", "right_"), ("right_", "left_")):
        if name.startswith(side):
            return other + name[len(side):]
    return name


def test_flip_permutation_maps_every_keypoint_to_its_mirror_twin_by_name():
    from hgpose.model.heatmaps import flip_permutation

    perm = flip_permutation(len(KEYPOINT_NAMES))
    wrong = {KEYPOINT_NAMES[j]: KEYPOINT_NAMES[perm[j]] for j in range(len(KEYPOINT_NAMES))
             if KEYPOINT_NAMES[perm[j]] != mirror_name(KEYPOINT_NAMES[j])}
    assert not wrong, f"flip permutation: these keypoints map to a joint that is not their mirror twin: {wrong}"
    assert sorted(perm) == list(range(17)), f"flip permutation {perm} is not a permutation"


def off_joints(error: torch.Tensor) -> str:
    """'left_ankle 0.912, ...': the joints whose heatmaps differ, with the largest difference."""
    return ", ".join(f"{KEYPOINT_NAMES[k]} {float(e):.3f}" for k, e in enumerate(error) if e >= 1e-6)


class LookupModel(torch.nn.Module):
    """A perfect network for two known inputs: returns `heatmaps[i]` for an input equal to `inputs[i]`."""

    def __init__(self, inputs: torch.Tensor, heatmaps: torch.Tensor):
        super().__init__()
        self.inputs, self.heatmaps = inputs, heatmaps

    def forward(self, x):
        found = [next(i for i, known in enumerate(self.inputs) if torch.equal(sample, known)) for sample in x]
        return self.heatmaps[found]


def test_flip_test_realigns_the_mirrored_targets_of_the_whole_skeleton():
    from hgpose.model.heatmaps import flip_back, flip_test

    size, heatmap = 64, 16
    rng = np.random.default_rng(3)
    points = torch.as_tensor(rng.uniform(1.0, heatmap - 2.0, (1, 17, 2)), dtype=torch.float32)  # sub-pixel
    visibility = torch.full((1, 17), 2)
    # the mirrored crop: pixel x -> H - 1 - x, and what was the left wrist is now seen as a right wrist
    twin = [KEYPOINT_NAMES.index(mirror_name(name)) for name in KEYPOINT_NAMES]
    mirrored_points = points.clone()
    mirrored_points[..., 0] = heatmap - 1 - points[..., 0]
    mirrored_points = mirrored_points[:, twin]
    targets, _ = render_heatmaps(points, visibility, heatmap)
    mirrored_targets, _ = render_heatmaps(mirrored_points, visibility, heatmap)
    realigned = flip_back(mirrored_targets)
    error = (realigned - targets).abs().amax(dim=(0, 2, 3))
    assert error.max() < 1e-6, f"flip_back of the mirrored crop's targets is off at {off_joints(error)}"
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    model = LookupModel(torch.cat([image, image.flip(-1)]), torch.cat([targets, mirrored_targets]))
    averaged = flip_test(model, image)
    error = (averaged - targets).abs().amax(dim=(0, 2, 3))
    assert error.max() < 1e-6, f"the flip test of a perfect network is off the targets at {off_joints(error)}"


# --- the target Gaussian (sigma 1 heatmap pixel, as documented) and DARK's use of the same sigma ----


def test_target_gaussian_has_the_documented_sigma_of_one_heatmap_pixel():
    targets, _ = render_heatmaps(torch.tensor([[[8.0, 7.0]]]), torch.tensor([[2]]), 16)
    peak = targets[0, 0]
    found = {"peak": float(peak[7, 8]), "1 px": float(peak[7, 9]), "2 px": float(peak[7, 10]),
             "diagonal": float(peak[8, 9]), "1 px up": float(peak[6, 8])}
    expected = {"peak": 1.0, "1 px": math.exp(-0.5), "2 px": math.exp(-2), "diagonal": math.exp(-1),
                "1 px up": math.exp(-0.5)}
    assert found == pytest.approx(expected, abs=1e-6), (
        f"target Gaussian (sigma = 1 heatmap pixel: exp(-d^2 / 2)): values at distances from the peak {found}, "
        f"expected {expected}")


def target_sigma(targets: torch.Tensor) -> float:
    """The sigma of a rendered unit Gaussian centred on a pixel, from the value one pixel off its peak,
    to 3 decimals (float32 rendering leaves ~1e-7 of noise, which would change DARK's kernel a little)."""
    flat = targets.reshape(-1)
    centre = int(flat.argmax())
    return round(math.sqrt(-1 / (2 * math.log(float(flat[centre + 1])))), 3)


def test_dark_decoding_uses_the_sigma_of_the_training_targets():
    from hgpose.model.heatmaps import dark_offsets, decode_heatmaps

    sigma = target_sigma(render_heatmaps(torch.tensor([[[8.0, 8.0]]]), torch.tensor([[2]]), 16)[0])
    truth = torch.tensor([[[7.3, 8.6], [3.8, 11.45], [10.1, 4.7], [6.55, 6.5]]])
    targets, _ = render_heatmaps(truth, torch.full((1, 4), 2), 16)
    # a network's heatmap is no exact Gaussian: the blur's sigma then shows in the decoded point
    noisy = targets + 0.05 * torch.rand(targets.shape, generator=torch.Generator().manual_seed(0))
    for maps in (targets, noisy):
        decoded, _ = decode_heatmaps(maps, "dark")
        index = maps.reshape(1, 4, -1).argmax(-1)
        argmax = torch.stack([index % 16, index // 16], dim=-1)
        with_target_sigma = argmax + dark_offsets(maps, argmax[..., 0], argmax[..., 1], sigma=sigma)
        gap = float((decoded - with_target_sigma).abs().max())
        assert gap < 1e-6, (f"DARK decoding differs by {gap:.2e} px from DARK with the targets' sigma {sigma:.4f}: "
                            "its smoothing must use the training targets' sigma")
    decoded, _ = decode_heatmaps(targets, "dark")
    error = float((decoded - truth).abs().max())
    assert error < 1e-3, f"DARK on exact Gaussian targets (sigma {sigma:.4f}) is {error:.2e} px off their centres"


# --- the residual block's skip, and an hourglass level's sum of its two branches ------------------


def test_residual_block_with_its_last_conv_zeroed_is_the_identity():
    from hgpose.model.hourglass import Residual

    block = Residual(8, 8).eval()
    torch.nn.init.zeros_(block.conv3.weight)
    torch.nn.init.zeros_(block.conv3.bias)
    x = torch.randn(2, 8, 6, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = block(x)
    gap = float((out - x).abs().max())
    assert gap == 0, f"residual block with its last conv zeroed is not the identity (max |out - x| {gap:.3g}): no skip"
    widening = Residual(8, 16).eval()  # channels change: the skip is a 1x1 convolution
    torch.nn.init.zeros_(widening.conv3.weight)
    torch.nn.init.zeros_(widening.conv3.bias)
    with torch.no_grad():
        gap = float((widening(x) - widening.skip(x)).abs().max())
    assert gap == 0, f"widening residual with its last conv zeroed differs from its 1x1 skip by {gap:.3g}"


def test_hourglass_level_sums_its_skip_and_its_upsampled_lower_branch():
    from hgpose.model.hourglass import Hourglass

    level = Hourglass(depth=2, features=8, residuals_per_level=1, innermost_residuals=1).eval()
    x = torch.randn(2, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        skip = level.skip(x)
        low = F.interpolate(level.low3(level.inner(level.low1(F.max_pool2d(x, 2, 2)))), scale_factor=2)
        both = level(x)
        level.ablate = "low"
        skip_only = level(x)
        level.ablate = "skip"
        low_only = level(x)
    gaps = {"output - (skip + low)": float((both - (skip + low)).abs().max()),
            "low branch zeroed - skip": float((skip_only - skip).abs().max()),
            "skip branch zeroed - low": float((low_only - low).abs().max())}
    assert max(gaps.values()) < 1e-6, f"an hourglass level must output skip(x) + upsample(low(x)); max gaps {gaps}"
    assert float(skip.abs().max()) > 0 and float(low.abs().max()) > 0


# --- OKS-NMS honours its threshold, in oks_nms and through the detected-box protocol ---------------

# COCO's per-keypoint sigmas, as published with the COCO keypoint evaluation
COCO_SIGMAS = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89]) / 10


def test_oks_nms_drops_a_prediction_only_above_the_given_threshold():
    from hgpose.evaluation.oks import NMS_THRESHOLD, oks_nms

    rng = np.random.default_rng(0)
    first = rng.uniform(20, 80, (17, 2))
    second = first + [3.0, 0.0]  # every keypoint 3 px to the right
    area = 2000.0
    oks = float(np.mean(np.exp(-9.0 / (2 * area * (2 * COCO_SIGMAS) ** 2))))  # the pair's OKS, from its definition
    assert 0.5 < oks < NMS_THRESHOLD
    args = ([7, 7], np.stack([first, second]), [0.9, 0.8], [area, area])
    kept = {threshold: oks_nms(*args, threshold=threshold).tolist() for threshold in (NMS_THRESHOLD, oks + 0.01,
                                                                                       oks - 0.01, 0.5)}
    expected = {NMS_THRESHOLD: [True, True], oks + 0.01: [True, True], oks - 0.01: [True, False], 0.5: [True, False]}
    assert kept == expected, (f"OKS-NMS must drop the lower-scored of two predictions with OKS {oks:.4f} exactly "
                              f"when the threshold is below it; kept per threshold {kept}, expected {expected}")
    assert oks_nms(*args).tolist() == [True, True], f"the default threshold is {NMS_THRESHOLD}"


def test_detected_box_protocol_applies_its_nms_threshold(tiny_coco, tmp_path):
    from hgpose.data.coco import load_split
    from hgpose.data.dataset import PersonDataset
    from hgpose.data.person_boxes import read_detections
    from hgpose.data.transforms import image_to_frame
    from hgpose.evaluation.coco import coco_ground_truth
    from hgpose.evaluation.topdown import evaluate_detected_boxes
    from test_protocol_detections import OracleModel, det, two_images_three_people

    root, _, _ = two_images_three_people(tiny_coco)
    people = tiny_coco.annotations
    dets = []
    for ann in people:  # each person found twice: exactly (score 0.9) and a pixel off (0.6, a duplicate)
        shifted = np.add(ann["bbox"], [1, 1, 0, 0]).tolist()
        dets += [det(ann["image_id"], ann["bbox"], 0.9), det(ann["image_id"], shifted, 0.6)]
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(dets))
    annotation_file = tiny_coco.annotation_file("val2017")
    boxes = PersonDataset(load_split(root, "val2017"), input_size=64, cache="off").boxes
    keypoints = np.stack([image_to_frame(np.array(people[i // 2]["keypoints"], np.float64).reshape(17, 3)[:, :2],
                                         boxes[i // 2], 16) for i in range(6)]).astype(np.float32)
    visibility = np.full((6, 17), 2)

    def after_nms(**threshold) -> tuple[int, str]:
        block, _ = evaluate_detected_boxes(
            OracleModel(keypoints, visibility, 16), read_detections(path), annotation_file, root / "val2017",
            "val2017", coco_ground_truth(annotation_file), input_size=64, batch_size=8, device="cpu",
            precision="fp32", progress=False, **threshold)
        return block["instances_after_nms"], block["nms"]

    found = {"default": after_nms(), "1.0": after_nms(nms_threshold=1.0), "0.0": after_nms(nms_threshold=0.0)}
    counts = {name: count for name, (count, _) in found.items()}
    # 1.0: no OKS exceeds it, all 6 stay; 0.9: the 3 duplicates go; 0.0: one prediction per image
    assert counts == {"default": 3, "1.0": 6, "0.0": 2}, (
        f"the detected-box protocol's OKS-NMS must use its nms_threshold: instances after NMS {counts}, "
        "expected 3 at the default 0.9, 6 at 1.0, 2 at 0.0")
    assert "at 1.0" in found["1.0"][1] and "at 0.9" in found["default"][1], found


# --- skipped samples are masked by the inference loop itself --------------------------------------


class UnmaskedSamples(torch.utils.data.Dataset):
    """Samples as a loader yields them, except that an invalid one (valid False) keeps garbage: a white
    image, keypoints on the heatmap and visibility 2. PersonDataset zeroes those; infer must not rely
    on it."""

    def __init__(self, count: int, invalid: set, size: int = 64, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.images = rng.integers(0, 256, (count, 3, size, size), dtype=np.uint8)
        self.keypoints = rng.uniform(1, size // 4 - 2, (count, 17, 2)).astype(np.float32)
        self.invalid = invalid
        for i in invalid:
            self.images[i] = 255

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": torch.from_numpy(self.images[i]), "keypoints": torch.from_numpy(self.keypoints[i]),
                "visibility": torch.full((17,), 2, dtype=torch.int64), "index": torch.tensor(i),
                "valid": torch.tensor(i not in self.invalid)}


class Only(torch.utils.data.Dataset):
    """The samples of `dataset` at `positions`, keeping their own index."""

    def __init__(self, dataset, positions):
        self.dataset, self.positions = dataset, list(positions)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> dict:
        return self.dataset[self.positions[i]]


def test_inference_loop_masks_skipped_samples_itself():
    from hgpose.data.loader import make_loader
    from hgpose.evaluation.inference import infer
    from hgpose.evaluation.pck import pck
    from hgpose.model.hourglass import build_model

    model = build_model(TINY, seed=0)
    invalid = {1, 4}
    dataset = UnmaskedSamples(7, invalid)
    valid_positions = [i for i in range(7) if i not in invalid]
    run = {"device": "cpu", "precision": "fp32", "progress": False}
    both = infer(model, make_loader(dataset, 3, shuffle=False), **run)
    clean = infer(model, make_loader(Only(dataset, valid_positions), 3, shuffle=False), **run)
    assert both.valid.tolist() == [i not in invalid for i in range(7)] and both.skipped == 2
    left = both.visibility[sorted(invalid)]
    assert not left.any(), f"infer left visibility {left.tolist()} on skipped samples {sorted(invalid)} (PCK counts it)"
    # (batches of another make-up round differently in the last digits: 1e-8 here, the garbage adds 0.03)
    assert both.loss == pytest.approx(clean.loss, rel=1e-6), (
        f"skipped samples must not enter the val loss: {both.loss} with them in the batch, {clean.loss} without")
    mixed, alone = (pck(r.coords, r.gt, r.visibility, 1.6) for r in (both, clean))
    assert (mixed.overall, int(mixed.counted.sum())) == (alone.overall, int(alone.counted.sum())), (
        f"skipped samples must not enter PCK: {mixed.overall} over {mixed.counted.sum()} keypoints with them, "
        f"{alone.overall} over {alone.counted.sum()} without")
