"""The third edition's instruments on cases with known answers: network dissection, the effective receptive
field, facing from keypoints, and per-stack PCK."""

from __future__ import annotations

import numpy as np
import pytest

from hgpose.explore.analyses import target_heatmaps
from hgpose.explore.dissection import PART_NAMES, detectors, dissect, iou_interval
from hgpose.explore.probes import array_batches
from hgpose.keypoints import KEYPOINT_NAMES

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


def _support(mean_map) -> tuple[int, int]:
    """(height, width) of the nonzero part of a centred map."""
    rows, cols = np.flatnonzero(np.abs(mean_map).sum(1) > 0), np.flatnonzero(np.abs(mean_map).sum(0) > 0)
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def test_effective_receptive_field_of_known_kernels_is_their_analytic_convolution():
    import torch

    from hgpose.explore.receptive_field import centred, gradient_maps, normalised, radius, ring_profile

    torch.manual_seed(0)
    sizes = (3, 3, 5)
    layers = [torch.nn.Conv2d(3, 2, 3, padding=1, bias=False), torch.nn.Conv2d(2, 2, 3, padding=1, bias=False),
              torch.nn.Conv2d(2, 2, 5, padding=2, bias=False)]
    for layer in layers:
        torch.nn.init.ones_(layer.weight)
    net = torch.nn.Sequential(*layers)
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    units = np.array([[16, 16], [9, 20]])  # (x, y): the second off centre
    maps = normalised(gradient_maps(net(x), x, units))
    shifted = centred(maps, units)
    # analytic: the unit sees the convolution of its kernels, boxes of ones; every sample the same
    line = np.ones(1)
    for size in sizes:
        line = np.convolve(line, np.ones(size))
    analytic = np.outer(line, line) / np.outer(line, line).sum()
    side = len(line)
    assert side == 1 + sum(s - 1 for s in sizes) == 9
    for sample in shifted:
        assert _support(sample) == (side, side)
        window = sample[31 - side // 2 : 31 + side // 2 + 1, 31 - side // 2 : 31 + side // 2 + 1]
        np.testing.assert_allclose(window, analytic, atol=1e-6)
    profile = ring_profile(shifted)
    assert (radius(profile, 1.0) == np.ceil(np.hypot(4, 4))).all()  # the corner of the 9x9 support
    assert (radius(profile, 0.5) < radius(profile, 0.9)).all()


def test_effective_receptive_field_of_an_hourglass_stays_inside_its_theoretical_one():
    from hgpose.explore.receptive_field import effective_receptive_fields, theoretical_rf
    from hgpose.model.hourglass import ModelConfig, build_model

    config = ModelConfig(depth=2, features=16, input_size=64)
    rf = theoretical_rf(config)
    assert rf["stem"] == 29 and rf["down1"] == 49  # by hand: 7, +2x2, +1x2, +2x4, +2x4; then +4, +2x8
    assert rf["head"] > rf["up1"] > rf["down2"] > rf["down1"]
    assert theoretical_rf(ModelConfig(depth=2, features=16, input_size=64, num_stacks=2))["stem"] == rf["head"]
    keypoints, visibility = np.full((3, 17, 2), 8.0), np.full((3, 17), 2)  # at the centre, far from the edges
    visibility[:, 5:] = 0
    images = np.random.default_rng(0).integers(0, 256, (3, 3, 64, 64), dtype=np.uint8)
    fields = effective_receptive_fields(build_model(config), images, keypoints, visibility)
    for stage in ("stem", "down1"):  # smaller than the crop: the gradient reaches exactly the theoretical side
        assert _support(fields.mean_maps[fields.names.index(stage)]) == (rf[stage], rf[stage])
    assert np.isnan(fields.profiles[:, KEYPOINT_NAMES.index("left_shoulder")]).all()  # not labelled: no unit
    inner = fields.radii(0.9)
    assert inner[fields.names.index("stem")] < inner[fields.names.index("bottleneck")]


def test_facing_from_hand_made_keypoints():
    from hgpose.explore.facing import BACK, FRONT, UNDECIDED, facing_from_keypoints

    upright = np.zeros((17, 2))
    upright[[5, 6, 11, 12]] = [[60, 40], [40, 40], [56, 80], [44, 80]]  # left shoulder and hip on the image right
    upright[[1, 2, 3, 4]] = [[53, 20], [47, 20], [58, 22], [42, 22]]
    mirrored = upright * [-1, 1]  # the same person seen from behind: left on the image left
    upside_down = upright * [-1, -1]  # rotated by 180 degrees: still facing the camera
    profile = upright.copy()
    profile[[5, 6, 11, 12], 0] = [50.5, 50, 50.2, 50]  # shoulders and hips overlap
    ears_only = profile.copy()
    visibility = np.full((5, 17), 2)
    visibility[4, [1, 2]] = 0  # profile with the ears' order only: the face decides
    ears_only[[3, 4], 0] = [45, 55]  # seen from behind
    keypoints = np.stack([upright, mirrored, upside_down, profile, ears_only])
    visibility[3, [1, 2, 3, 4]] = 0  # a profile without face points: undecided
    facing, score = facing_from_keypoints(keypoints, visibility)
    assert facing.tolist() == [FRONT, BACK, FRONT, UNDECIDED, BACK]
    assert score[0] == pytest.approx((20 + 12) / 2 / 40) and score[1] == pytest.approx(-score[0])
    # without the hips the image's up is the axis
    no_hips = visibility[:2].copy()
    no_hips[:, [11, 12]] = 0
    assert facing_from_keypoints(keypoints[:2], no_hips)[0].tolist() == [FRONT, BACK]


def test_facing_from_keypoints_agrees_with_the_generators_yaw():
    from hgpose.explore.facing import UNDECIDED, facing_from_keypoints, known_facing
    from hgpose.synth import random_colours, sample_figure

    rng = np.random.default_rng(0)
    figures = [sample_figure(rng, float(rng.uniform(60, 200)), float(rng.uniform(-np.pi, np.pi)), random_colours(rng))
               for _ in range(400)]
    keypoints = np.stack([f.keypoints for f in figures])
    visibility = np.stack([np.where(f.labelled, 2, 0) for f in figures])
    facing, _ = facing_from_keypoints(keypoints, visibility)
    truth = known_facing([{"yaw": f.yaw} for f in figures])
    clear = np.abs(np.cos([f.yaw for f in figures])) > 0.25  # away from profile
    assert (facing[clear] == truth[clear]).all()
    decided = facing != UNDECIDED
    assert (facing[decided] == truth[decided]).all() and decided.mean() > 0.8
    assert known_facing([{"facing": "back"}, {"facing": 1}]).tolist() == [-1, 1]
    assert known_facing([{"facing": 1}, {}]) is None


def test_known_facing_reads_the_generated_files_yaw_and_agrees_with_the_keypoints(synth_dataset):
    import json

    from hgpose.explore.facing import UNDECIDED, facing_from_keypoints, known_facing

    data = json.loads((synth_dataset / "annotations" / "person_keypoints_val2017.json").read_text())
    people = [a for a in data["annotations"] if a["num_keypoints"] > 0]
    truth = known_facing(people)  # hgpose synth's "hgpose_yaw", in degrees
    assert truth is not None and set(truth.tolist()) == {-1, 1}, "both facings drawn, read from the file"
    points = np.array([a["keypoints"] for a in people], np.float64).reshape(len(people), 17, 3)
    facing, _ = facing_from_keypoints(points[..., :2], points[..., 2])
    decided = facing != UNDECIDED
    assert decided.sum() >= 5 and (facing[decided] == truth[decided]).mean() >= 0.9, (facing, truth)


@pytest.fixture(scope="module")
def two_stacks(synth_dataset, tmp_path_factory):
    """A tiny 2-stack model trained for eight epochs, and its first stack alone as a 1-stack checkpoint."""
    from hgpose.model.hourglass import HourglassNet, ModelConfig
    from hgpose.model.weights import load_model, save_model
    from hgpose.train.config import TrainConfig
    from hgpose.train.loop import train

    out = tmp_path_factory.mktemp("stacks")
    config = ModelConfig(num_stacks=2, depth=2, features=32, input_size=64)
    run = train(TrainConfig(data=str(synth_dataset), out=str(out / "run"), epochs=8, batch_size=8, workers=0,
                            progress=False, cache="off", model=config, lr=2e-3))
    full = load_model(run / "best.safetensors")
    first = HourglassNet(ModelConfig(num_stacks=1, depth=2, features=32, input_size=64))
    kept = {k: v for k, v in full.state_dict().items() if k in first.state_dict()}
    assert set(kept) == set(first.state_dict())  # stem, hourglass 0 and head 0 under the same names
    first.load_state_dict(kept)
    return run / "best.safetensors", save_model(first, out / "first_stack.safetensors")


def test_per_stack_pck_equals_evaluate_on_each_stacks_output(two_stacks, synth_dataset):
    from hgpose.evaluate import evaluate_checkpoint, headline_pck
    from hgpose.explore.report import load_samples
    from hgpose.explore.stacks import ERROR_CLASSES, stack_study
    from hgpose.model.weights import load_model

    full_path, first_path = two_stacks
    model = load_model(full_path)
    samples = load_samples(synth_dataset, "val2017", 64, 0)
    study = stack_study(model, samples.images, samples.keypoints, samples.visibility)
    evaluated = [headline_pck(evaluate_checkpoint(path, synth_dataset, "val2017", device="cpu", precision="fp32",
                                                  progress=False, cache="off")) for path in (first_path, full_path)]
    assert study.pck == pytest.approx(evaluated, abs=1e-9)
    assert (study.pck > 0).all() and study.pck[0] != study.pck[1]  # two different outputs: a swap would show
    assert study.samples == len(samples)
    assert study.errors.sum(1) == pytest.approx([1, 1]) and study.errors.shape == (2, len(ERROR_CLASSES))
    assert study.errors[:, 0] == pytest.approx(study.pck)  # "good" is exactly the PCK-correct share
    assert study.change_low[1] <= study.pck[1] - study.pck[0] <= study.change_high[1]
    moved = study.errors[1] - study.errors[0]
    assert (study.error_change_low <= moved + 1e-12).all() and (moved <= study.error_change_high + 1e-12).all()


def test_per_pixel_probe_across_the_stacks_gives_a_row_per_stacks_stage(two_stacks, synth_dataset):
    from hgpose.explore.instrument_sections import stack_probe_note, stacks_section
    from hgpose.explore.probes import model_pixel_probes
    from hgpose.explore.report import load_samples
    from hgpose.explore.stacks import stack_heatmaps, stack_study, stacks_pixel_probes
    from hgpose.model.weights import load_model

    model = load_model(two_stacks[0])
    samples = load_samples(synth_dataset, "val2017", 64, 0)
    across = stacks_pixel_probes(model, samples.images, samples.keypoints, samples.visibility, folds=3)
    second = model_pixel_probes(model, samples.images, samples.keypoints, samples.visibility, folds=3)  # last stack
    rows = len(second.stages)
    assert across.stages == [f"stack {t} {s}" for t in (1, 2) for s in second.stages]
    assert across.pck.shape == (2 * rows, len(KEYPOINT_NAMES)) == across.ceiling.shape
    np.testing.assert_array_equal(across.pck[rows:], second.pck)  # the second stack's rows are its own probe
    assert not np.array_equal(across.pck[:rows], second.pck)  # and the first stack's are another network's
    note = stack_probe_note(across)
    assert "stack 1: best" in note and "stack 2: best" in note
    study = stack_study(model, samples.images, samples.keypoints, samples.visibility)
    maps = stack_heatmaps(model, samples.images[:2])
    section = stacks_section(study, samples.images[:2], maps, samples.keypoints[:2], samples.visibility[:2],
                             model.config, 1.0, across)
    assert any(note in part for part in section.body) and f"{len(across.stages)} stages of all stacks" in section.cost


def test_error_classes_of_hand_placed_predictions():
    from hgpose.explore.stacks import error_classes

    keypoints = np.zeros((1, 17, 2)) + 8
    keypoints[0, 5], keypoints[0, 6] = [4, 8], [12, 8]  # shoulders 8 heatmap pixels apart
    visibility = np.full((1, 17), 2)
    visibility[0, 16] = 0
    coords = keypoints.copy()
    coords[0, 5] = [12.2, 8]  # on the right shoulder: an inversion
    coords[0, 7] = [8 + 1.5, 8]  # 1.5 px away with c = 1.6: jitter (0.94 c)
    coords[0, 8] = [8 + 6, 8]  # 3.75 c: a miss
    classes = error_classes(coords, keypoints, visibility, normalizer=1.6)
    assert classes[0, 5] == 2 and classes[0, 7] == 1 and classes[0, 8] == 3 and classes[0, 16] == -1
    assert classes[0, 0] == 0


def test_over_training_names_the_analysed_epoch_and_flags_an_outlying_end(tmp_path):
    from hgpose.explore.sections import _analysed_sentence, _stability_sentence
    from hgpose.explore.trajectory import TrainingTrajectory, analysed_epoch

    (tmp_path / "metrics.csv").write_text("epoch,lr,val_loss,val_pck\n1,0.001,0.02,0.1\n2,0.001,0.01,0.4\n"
                                          "3,0.001,0.14,0.2\n")
    assert analysed_epoch(tmp_path, tmp_path / "best.safetensors") == 2  # the best validation PCK
    assert analysed_epoch(tmp_path, tmp_path / "checkpoints" / "epoch_003.safetensors") == 3
    assert analysed_epoch(tmp_path, tmp_path / "elsewhere.safetensors") is None

    def trajectory(losses, previous):
        e = len(losses)
        return TrainingTrajectory(np.arange(1, e + 1), None, ["stem", "up1"], np.zeros((e, 2, 17)), np.zeros(17),
                                  np.ones((e, 2)), np.zeros((e, 1)), np.zeros((e, 17)), np.zeros(e), 8,
                                  np.asarray(previous, float), np.asarray(losses, float), float(min(losses)))

    outlier = trajectory([0.02, 0.01, 0.14], [[np.nan, np.nan], [0.5, 0.95], [0.92, 0.97]])
    assert outlier.outlying_end() and "outlier" in _analysed_sentence(outlier, 2)
    assert "epoch 2" in _analysed_sentence(outlier, 2)
    calm = trajectory([0.02, 0.01, 0.012], [[np.nan, np.nan], [0.5, 0.95], [0.92, 0.97]])
    assert not calm.outlying_end() and "outlier" not in _analysed_sentence(calm, 2)
    sentence = _stability_sentence(calm)
    assert "stem's from epoch 1 to 2 (CKA 0.50)" in sentence and "From epoch 3 on" in sentence
    still = trajectory([0.02, 0.01, 0.012], [[np.nan, np.nan], [0.95, 0.95], [0.92, 0.6]])
    assert "still changes" in _stability_sentence(still)


def test_joint_dependency_names_only_pairs_outside_the_occluder_with_an_interval_above_zero():
    from hgpose.explore.dependency import JointDependency
    from hgpose.explore.sections import dependency_findings

    rng = np.random.default_rng(0)
    drops = rng.normal(0, 0.01, size=(40, 17, 17))
    drops -= drops.mean(axis=0)  # no reliance anywhere else: every other pair's mean drop is exactly zero
    drops[:, 9, 7] += 0.2  # wrist relies on elbow: far apart, a clear drop
    drops[:, 1, 2] += 0.5  # an eye when the other is hidden: larger, but the eyes share the occluder
    drops[:, 10, 8] = 0.05 + 0.6 * np.tile([1, -1], 20)  # a mean of 0.05 that the spread between samples explains
    separation = np.full((17, 17), 20.0)
    separation[1, 2] = separation[2, 1] = 2.0
    dependency = JointDependency(drops.mean(0), np.zeros((17, 17)), np.full(17, 40), 4.0, drops, separation)
    survivors = dependency.surviving_pairs(5)
    assert [(i, j) for i, j, *_ in survivors] == [(9, 7)]
    assert (1, 2) not in [(i, j) for i, j, *_ in survivors] and dependency.inside_occluder()[1, 2]
    assert (10, 8) not in [(i, j) for i, j, *_ in survivors]
    _, low, high = survivors[0][2:]
    assert 0 < low < 0.2 < high
    opening, note = dependency_findings(dependency)
    assert opening.startswith("Joints whose prediction relies") and "left_wrist" in opening
    assert "left_eye when right_eye is hidden" in note and "2.0 px apart" in note


def test_wrong_side_share_counts_only_keypoints_found_on_their_pair():
    from hgpose.explore.facing import wrong_side_share

    keypoints = np.zeros((2, 17, 2))
    keypoints[:, 5], keypoints[:, 6] = [4, 8], [12, 8]  # the shoulders; no other joint labelled
    visibility = np.zeros((2, 17), int)
    visibility[:, [5, 6]] = 2
    swapped = keypoints.copy()
    swapped[0, 5], swapped[0, 6] = keypoints[0, 6], keypoints[0, 5]  # sample 1 swapped, sample 2 right
    assert wrong_side_share(swapped, keypoints, visibility, 1.6) == pytest.approx(0.5)
    lost = keypoints.copy()
    lost[0, 5] = lost[0, 6] = [30, 30]  # sample 1 found nowhere: it no longer counts
    assert wrong_side_share(lost, keypoints, visibility, 1.6) == 0.0
    assert np.isnan(wrong_side_share(np.full_like(keypoints, 30), keypoints, visibility, 1.6))


def test_people_interval_resamples_people_not_joints():
    from hgpose.explore.sections import people_interval

    same = np.tile([[0.2, 0.4, np.nan]], (10, 1))  # every person alike: no spread between people
    mean, low, high = people_interval(same)
    assert mean == pytest.approx(0.3) and low == pytest.approx(0.3) and high == pytest.approx(0.3)
    spread = np.concatenate([np.zeros((5, 3)), np.ones((5, 3))])
    mean, low, high = people_interval(spread)
    assert mean == pytest.approx(0.5) and low < 0.3 and high > 0.7
    assert np.isnan(people_interval(spread[:1])[1])  # one person: no interval


def test_per_joint_ece_intervals_separate_an_overconfident_joint():
    from hgpose.explore.calibration import calibrate, per_joint_ece_intervals
    from hgpose.explore.sections import _least_calibrated

    rng = np.random.default_rng(0)
    confidence = rng.uniform(0, 1, size=(300, 17))
    correct = rng.uniform(0, 1, size=(300, 17)) < confidence  # calibrated: P(correct) = confidence
    correct[:, 9] = rng.uniform(0, 1, size=300) < 0.2 * confidence[:, 9]  # left wrist: over-confident
    counted = np.ones((300, 17), bool)
    result = calibrate(confidence, correct, counted)
    low, high = per_joint_ece_intervals(confidence, correct, counted)
    # (a percentile interval of a statistic biased upwards need not hold its point estimate: not asserted)
    assert low[9] > np.delete(high, 9).max() and (high - low < 0.15).all()
    assert "least calibrated joint is left_wrist" in _least_calibrated(result, 9, low, high)
    assert "No joint is clearly" in _least_calibrated(result, 0, low, high)


def _pixel_probes(pck):
    from hgpose.explore.probes import PixelProbes

    stages, k = ["down1", "bottleneck", "up1"], len(KEYPOINT_NAMES)
    return PixelProbes(stages, [8, 2, 16], np.asarray(pck, float), np.full((3, k), 0.7), np.full((3, k), 0.9),
                       np.full(k, 0.1), np.full(k, 20), 20, 4, np.zeros((3, 20, k, 2)))


def test_probes_section_opens_with_the_stage_its_numbers_read_best():
    from types import SimpleNamespace

    from hgpose.explore.sections import probes_section

    k = len(KEYPOINT_NAMES)
    pooled = SimpleNamespace(stages=["down1", "bottleneck", "up1", "output"], position_r2=np.full((4, k), 0.5))
    cka = np.eye(3)
    output_pck = np.full(k, 0.6)
    late = probes_section(_pixel_probes(np.repeat([[0.2], [0.1], [0.58]], k, 1)), output_pck, pooled, cka, 1.0)
    early = probes_section(_pixel_probes(np.repeat([[0.4], [0.1], [0.2]], k, 1)), output_pck, pooled, cka, 1.0)
    opening = "A linear read-out of {} places the joints best (held-out PCK {}"
    assert late.intro.startswith(opening.format("up1", "0.58"))
    assert f"for {k} of the {k} joints some stage closes" in late.intro  # 0.58 closes 80% of 0.1 -> 0.6
    assert early.intro.startswith(opening.format("down1", "0.40"))
    assert f"for 0 of the {k} joints" in early.intro  # 0.40 falls short of 0.1 + 0.8 * 0.5


def test_saliency_section_opens_with_the_share_near_the_joint_and_its_interval():
    import torch

    from hgpose.explore.sections import saliency_section

    n, k, side = 3, len(KEYPOINT_NAMES), 16
    crops, maps = torch.zeros(n, 3, side, side), np.zeros((n, k, side, side))
    coords = np.full((n, k, 2), side / 2)
    near = saliency_section(crops, maps, coords, np.full((n, k), 0.5), 0.05)
    spread = saliency_section(crops, maps, coords, np.array([[0.05], [0.1], [0.15]]).repeat(k, 1), 0.05)
    assert near.intro.startswith("50% of each joint's saliency lies near the predicted joint, 10.0 times")
    assert "interval over the 3 samples 10.0-10.0 times" in near.intro  # every sample alike
    assert spread.intro.startswith("10% of each joint's saliency lies near the predicted joint, 2.0 times")
    low, high = spread.intro.split("samples ")[1].split(" times")[0].split("-")
    assert 1.0 <= float(low) < 2.0 < float(high) <= 3.0


def test_skip_vs_low_opening_names_a_loss_only_when_its_interval_shows_one():
    from types import SimpleNamespace

    from hgpose.explore.sections import branch_finding

    study = SimpleNamespace(overall=np.array([0.5, 0.45, 0.2]), branch=["", "skip", "low"], level=[0, 1, 1])
    clear = branch_finding(study, SimpleNamespace(low=[0, -0.1, -0.4], high=[0, 0.0, -0.2]))
    assert clear == ("Zeroing the low branch of level 1 costs the most PCK (-0.300, 95% paired interval -0.400 to "
                     "-0.200).")
    unclear = branch_finding(study, SimpleNamespace(low=[0, -0.1, -0.5], high=[0, 0.0, 0.01]))
    assert unclear.endswith("the interval reaches zero, so no branch is shown to matter.")
    none = branch_finding(SimpleNamespace(overall=np.array([0.5, 0.55, 0.6]), branch=["", "skip", "low"],
                                          level=[0, 1, 1]), SimpleNamespace(low=[0, -0.1, 0], high=[0, 0.2, 0.2]))
    assert none.startswith("Zeroing no branch lowers PCK on these samples (the smallest change, the skip branch")
