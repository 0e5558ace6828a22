"""The logic of the explore analyses on synthetic data where the right answer is known: probes, CKA,
calibration and bootstrap intervals, the joint-dependency masks and deletion-curve areas."""

from __future__ import annotations

import numpy as np
import pytest

from hgpose.explore import attribution, calibration, dependency, probes

# --- probes ------------------------------------------------------------------------------------------


def _planted(n=120, d=64, k=3, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, d))
    weights = rng.normal(size=(d, k * 2))
    keypoints = (features @ weights).reshape(n, k, 2) + noise * rng.normal(size=(n, k, 2))
    return features, keypoints


def test_probe_recovers_a_planted_linear_position_and_not_noise():
    features, keypoints = _planted()
    visibility = np.full(keypoints.shape[:2], 2)
    noise = np.random.default_rng(1).normal(size=features.shape)
    result = probes.linear_probes({"signal": features, "noise": noise}, keypoints, visibility)
    assert result.stages == ["signal", "noise"] and result.position_r2.shape == (2, 3)
    assert np.all(result.position_r2[0] > 0.9), result.position_r2
    assert np.all(result.position_r2[1] < 0.1), result.position_r2  # held-out R^2 of noise: about 0 or below
    assert list(result.labelled) == [120, 120, 120] and result.samples == 120


def test_probe_uses_only_labelled_samples_for_position_and_reads_visibility():
    features, keypoints = _planted(n=150, k=1)
    rng = np.random.default_rng(2)
    visible = features[:, 0] > 0  # visibility planted along one feature direction
    visibility = np.where(visible, 2, 1)[:, None]
    hidden = np.flatnonzero(~visible)[:20]
    visibility[hidden] = 0  # not labelled: excluded from the position probe, "not visible" for the other
    keypoints[hidden] = 1e6  # would wreck the position probe if they were used
    noise = rng.normal(size=features.shape)
    result = probes.linear_probes({"signal": features, "noise": noise}, keypoints, visibility)
    assert result.labelled[0] == 130 and result.position_r2[0, 0] > 0.9
    assert result.visible_auroc[0, 0] > 0.75 and abs(result.visible_auroc[1, 0] - 0.5) < 0.15


def test_probe_is_nan_with_too_few_samples():
    features, keypoints = _planted(n=8, k=1)
    result = probes.linear_probes({"s": features}, keypoints, np.full((8, 1), 2))
    assert np.isnan(result.position_r2[0, 0]) and np.isnan(result.visible_auroc[0, 0])


def test_cka_of_a_representation_with_itself_is_one_and_invariant_to_rotation_and_scale():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 30)) @ rng.normal(size=(30, 30))
    rotation, _ = np.linalg.qr(rng.normal(size=(30, 30)))
    assert probes.linear_cka(x, x) == pytest.approx(1.0)
    assert probes.linear_cka(x, 3.0 * x @ rotation + 5.0) == pytest.approx(1.0)
    unrelated = rng.normal(size=(50, 30))
    assert probes.linear_cka(x, unrelated) < 0.6
    # not invariant to a general invertible linear map (CKA is not CCA)
    stretch = np.diag(np.r_[np.full(5, 20.0), np.ones(25)])
    assert probes.linear_cka(x, x @ stretch) < 0.95
    matrix = probes.cka_matrix({"a": x, "b": unrelated})
    assert matrix.shape == (2, 2) and np.allclose(np.diag(matrix), 1) and np.allclose(matrix, matrix.T)


# --- calibration and intervals -----------------------------------------------------------------------


def test_ece_of_a_perfectly_calibrated_set_is_about_zero_and_of_an_overconfident_one_is_not():
    rng = np.random.default_rng(0)
    confidence = rng.uniform(size=(20000, 2))
    correct = rng.uniform(size=confidence.shape) < confidence
    counted = np.ones_like(correct)
    calibrated = calibration.calibrate(confidence, correct, counted)
    assert calibrated.ece < 0.02 and np.all(calibrated.per_joint_ece < 0.03)
    assert 0.8 < calibrated.auroc < 0.9  # confidence = probability: AUROC 5/6 in theory
    curve = calibrated.overall
    filled = curve.count > 0
    np.testing.assert_allclose(curve.accuracy[filled], curve.confidence[filled], atol=0.03)
    over = calibration.calibrate(np.clip(confidence + 0.3, 0, 1), correct, counted)
    assert over.ece > 0.2
    assert calibration.auroc(confidence[:, 0], np.ones(20000, bool)) != calibration.auroc(confidence[:, 0],
                                                                                          correct[:, 0])
    assert np.isnan(calibration.auroc([0.2, 0.9], [True, True]))


def test_calibration_ignores_keypoints_that_do_not_count():
    confidence = np.array([[0.9, 0.9], [0.1, 0.9]])
    correct = np.array([[True, False], [False, False]])
    counted = np.array([[True, False], [True, False]])
    result = calibration.calibrate(confidence, correct, counted)
    assert result.overall.count.sum() == 2 and result.ece == pytest.approx(0.1)
    assert np.isnan(result.per_joint_ece[1]) and result.auroc == 1.0


def test_bootstrap_interval_contains_the_estimate_and_narrows_with_more_samples():
    rng = np.random.default_rng(0)

    def interval(n):
        correct = rng.uniform(size=(n, 3)) < [0.2, 0.5, 0.9]
        joint, pooled = calibration.pck_intervals(correct, np.ones((n, 3), bool))
        assert np.all(joint.low <= joint.value) and np.all(joint.value <= joint.high)
        return joint, pooled

    small, _ = interval(30)
    large, pooled = interval(3000)
    assert np.all(large.high - large.low < (small.high - small.low) / 3)
    assert pooled.low < pooled.value < pooled.high and large.samples == 3000
    assert not large.overlaps(0, 2) and large.overlaps(1, 1)


def test_paired_lesion_interval_of_no_change_is_zero_and_of_a_real_drop_excludes_zero():
    rng = np.random.default_rng(0)
    intact = rng.uniform(size=(200, 17)) < 0.7
    worse = intact & (rng.uniform(size=(200, 17)) < 0.8)
    values, changes = calibration.pooled_pck_intervals(np.stack([intact, intact, worse]), np.ones((200, 17)))
    assert values.value[0] == values.value[1] and changes.low[1] == changes.high[1] == 0
    assert changes.high[2] < 0 and changes.value[2] == pytest.approx(values.value[2] - values.value[0])


# --- dependency masks, deletion area -------------------------------------------------------------------


def test_disc_masks_are_centred_on_input_pixel_centres():
    masks = dependency.disc_masks([(3.0, 5.0)], 10, 1.0)
    assert masks.shape == (1, 10, 10) and masks.sum() == 5
    assert masks[0, 5, 3] and masks[0, 5, 4] and masks[0, 6, 3] and not masks[0, 6, 4]


def test_strongest_pairs_skip_the_diagonal_and_nan():
    drop = np.array([[9.0, 0.1, np.nan], [0.5, 9.0, 0.2], [0.3, 0.0, 9.0]])
    result = dependency.JointDependency(drop, drop, np.ones(3), 4.0)
    assert result.strongest_pairs(2) == [(1, 0, 0.5), (2, 0, 0.3)]


def test_deletion_area_is_the_mean_confidence_over_the_removed_fraction():
    fractions = (0.0, 0.5, 1.0)
    assert attribution.deletion_area([1.0, 1.0, 1.0], fractions) == pytest.approx(1.0)
    assert attribution.deletion_area([1.0, 0.0, 0.0], fractions) == pytest.approx(0.25)
    assert attribution.rank_correlation(np.arange(10), np.arange(10) ** 2) == pytest.approx(1.0)
    assert np.isnan(attribution.rank_correlation(np.ones(5), np.arange(5)))


def test_small_stages_are_drawn_as_numbers_and_larger_ones_as_images():
    from matplotlib.figure import Figure

    from hgpose.explore.figures import _activation_tile

    small, large = Figure().subplots(1, 2)
    _activation_tile(small, np.array([[0.5, 1.25], [-2.0, 3.0]]))
    _activation_tile(large, np.zeros((4, 4)))
    assert sorted(t.get_text() for t in small.texts) == ["-2", "0.5", "1.2", "3"] and not small.images
    assert len(large.images) == 1 and not large.texts


# --- the per-pixel read-out ----------------------------------------------------------------------------


def _planted_maps(n=60, k=4, side=16, channels=24, noise=0.05, seed=0):
    """Stage maps (n, C, side, side) whose channels are a random linear mix of the joints' target heatmaps
    (the hidden joints' maps at 0.3 of their height), plus the truth they encode."""
    rng = np.random.default_rng(seed)
    keypoints = rng.uniform(1, side - 2, size=(n, k, 2))
    visibility = np.where(rng.uniform(size=(n, k)) < 0.5, 2, 1)
    visibility[:5, 0] = 0  # not labelled: no target, not scored
    targets, _ = probes.stage_targets(keypoints, visibility, side, side)
    shown = targets * np.where(visibility == 2, 1.0, 0.3)[..., None, None]
    mixing = rng.normal(size=(channels, k))
    maps = np.einsum("ck,nkyx->ncyx", mixing, shown) + noise * rng.normal(size=(n, channels, side, side))
    return maps.astype(np.float32), keypoints, visibility


def test_pixel_probe_recovers_a_planted_linear_heatmap_and_not_noise():
    maps, keypoints, visibility = _planted_maps()
    noise = np.random.default_rng(1).normal(size=maps.shape).astype(np.float32)
    coarse = maps.reshape(*maps.shape[:2], 4, 4, 4, 4).mean(axis=(3, 5))  # the signal on a 4x4 grid
    result = probes.pixel_probes(lambda: probes.array_batches({"signal": maps, "coarse": coarse, "noise": noise}, 16),
                                 keypoints, visibility, heatmap_size=16)
    assert result.stages == ["signal", "coarse", "noise"] and result.sides == [16, 4, 16]
    assert result.pck.shape == (3, 4) and list(result.counted) == [55, 60, 60, 60]
    assert np.all(result.pck[0] > 0.9), result.pck
    # noise reads out no better than the training folds' mean map does
    assert np.all(result.pck[2] <= result.chance + 0.1) and np.all(result.chance < 0.2), (result.pck, result.chance)
    # a stage cannot place a joint more finely than its grid: the 4x4 read-out stays under its ceiling
    assert np.all(result.ceiling[0] > 0.95) and np.all(result.ceiling[1] < 0.6)
    assert np.all(result.pck[1] <= result.ceiling[1] + 0.05) and np.all(result.pck[1] > result.pck[2])
    # the planted maps are weaker where the joint is hidden: the read-out's peak tells "visible" apart
    assert np.all(result.visible_auroc[0] > 0.9) and np.all(np.abs(result.visible_auroc[2] - 0.5) < 0.25)
    assert result.coords.shape == (3, 60, 4, 2)
    # a fit on a random quarter of each sample's pixels (how large stages are kept cheap) still finds it
    subset = probes.pixel_probes(lambda: probes.array_batches({"signal": maps}), keypoints, visibility, 16,
                                 fit_pixels=64)
    assert np.all(subset.pck[0] > 0.9), subset.pck


def test_pixel_probe_folds_hold_whole_samples():
    maps, keypoints, visibility = _planted_maps(n=40, k=2)
    folds = probes.sample_folds(40, 5, seed=0)
    assert sorted(np.bincount(folds)) == [8] * 5

    def read(points):
        return probes.pixel_probes(lambda: probes.array_batches({"s": maps}, 7), points, visibility, 16).coords[0]

    before = read(keypoints)
    moved = keypoints.copy()
    moved[0] = 15 - moved[0]  # sample 0's targets move; its features do not
    after = read(moved)
    # sample 0 is read out by maps fitted without it, so its read-out cannot follow its own targets,
    # while the maps that read the other folds did see the change
    same_fold = folds == folds[0]
    np.testing.assert_array_equal(after[same_fold], before[same_fold])
    assert not np.array_equal(after[~same_fold], before[~same_fold])


def test_pixel_probe_is_nan_with_too_few_samples():
    maps, keypoints, visibility = _planted_maps(n=6, k=1)
    result = probes.pixel_probes(lambda: probes.array_batches({"s": maps}), keypoints, visibility, 16)
    assert np.isnan(result.pck).all() and np.isnan(result.chance).all() and result.samples == 6


def test_encoding_stage_is_the_first_to_close_most_of_the_gap_from_chance_to_the_network():
    from hgpose.explore.sections import encoding_stage

    pck = np.array([[0.2, 0.5, 0.9], [0.7, 0.55, 0.9], [0.8, 0.6, 0.9]])  # stages x joints
    pixel = probes.PixelProbes(["stem", "up1", "head"], [16, 16, 16], pck, pck, pck, np.array([0.1, 0.5, 0.3]),
                               np.ones(3), 10, 5, np.zeros((3, 10, 3, 2)))
    # joint 0 needs 0.1 + 0.8 * 0.7 = 0.66 (up1); joint 1 needs 0.58 (head); joint 2's network is under chance
    assert encoding_stage(pixel, np.array([0.8, 0.6, 0.2])) == [1, 2, None]
