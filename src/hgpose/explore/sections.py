"""The sections of the explore report: each turns an analysis's arrays into figures, tables and sentences
computed from those arrays (no sentence states a finding the figures do not show)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hgpose.explore import analyses, figures
from hgpose.explore.attribution import DELETION_FRACTIONS, deletion_area
from hgpose.explore.facing import twin_landings
from hgpose.explore.html import Section, gallery, image, paragraph, table
from hgpose.keypoints import KEYPOINT_NAMES, twin_of

SECTION_TITLES = (
    "Heatmaps", "What each stack fixes", "Activations", "What each channel detects", "Where joint information lives",
    "Where left and right are decided", "Over training", "Skip vs low branch", "How far each stage sees", "Saliency",
    "Attributions, checked", "Occlusion sensitivity", "Joint dependency", "Lesion study", "Calibration",
    "Where it fails",
)
SALIENCY_RADIUS = 0.1  # of the crop side: "near the joint"
PROBE_SHARE = 0.8  # a stage "encodes" a joint once its read-out closes this much of the chance-to-network gap
ATTRIBUTED_JOINTS = (9, 16, 0, 8, 14, 5)  # preferred joints drawn in the attribution figure (wrist first)
RANDOMISATION_PASS = 0.5  # a map "passes" when its rank correlation with the randomised model's is below this
OUTPUT_STAGE = "output"  # a probe matrix's reference row: the network's own answer, not a stage


def fmt(x, digits: int = 3) -> str:
    return "-" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def _title(name: str) -> Section:
    anchor = name.lower().replace(",", "").replace(" ", "-")
    return Section(anchor, name, "")


def report_section(title: str, intro: str, body, cost: str = "") -> Section:
    assert title in SECTION_TITLES, title
    section = _title(title)
    section.intro, section.body, section.cost = intro, list(body), cost
    return section


def opening(finding: str, intro: str) -> str:
    """A section's intro led by its computed finding, so that a reader learns the result before the method."""
    return f"{finding} {intro}" if finding else intro


def _cost(samples: int, seconds: float | None = None, what: str = "samples") -> str:
    return f"{samples} {what}" + (f", {seconds:.1f} s" if seconds is not None else "") + "."


def twin_confusions(coords, keypoints, visibility, normalizer: float) -> dict:
    """Predicted keypoints that land on their left/right twin: within the PCK radius (0.5 normalizer) of the
    twin's true position and closer to it than to their own, among keypoints whose twin is labelled too."""
    on_twin, _, both = twin_landings(coords, keypoints, visibility, normalizer)
    swapped, considered = int(on_twin.sum()), int(both.sum())
    return {"swapped": swapped, "considered": considered}


# --- 1, 2: heatmaps, activations ----------------------------------------------------------------------


def heatmaps_section(crops, predicted, targets, coords, confidence, data_set, shown, config, twins) -> Section:
    scale = config.input_size / config.heatmap_size
    body = []
    for i, position in enumerate(shown):
        truth = analyses.to_input_coords(data_set.keypoints[position], config.input_size, config.heatmap_size)
        figure = figures.heatmap_figure(crops[i].numpy(), predicted[i], targets[i],
                                   analyses.to_input_coords(coords[i], config.input_size, config.heatmap_size),
                                   confidence[i], truth, data_set.visibility[position])
        body += [f"<h3>sample {i + 1} (annotation {int(data_set.ann_ids[position])})</h3>",
                 image(figure, f"heatmaps of sample {i + 1}")]
    share = twins["swapped"] / twins["considered"] if twins["considered"] else float("nan")
    finding = heatmaps_finding(confidence, twins)
    body.append(paragraph(
        f"Left/right swaps over all {len(data_set.images)} samples: {twins['swapped']} of the "
        f"{twins['considered']} predicted left or right keypoints whose twin is labelled too ({fmt(100 * share, 1)}%) "
        "lie within the PCK radius of the twin's true position and closer to it than to their own.", "note"))
    return report_section("Heatmaps", opening(finding, (
        f"The network answers with one {config.heatmap_size}x{config.heatmap_size} map per joint (each "
        f"heatmap pixel covers {scale:g}x{scale:g} input pixels). Training pulls each map towards a small "
        "Gaussian at the true joint; the predicted keypoint is the map's highest point and its height is the "
        "confidence shown after the joint's name. Rows 1 and 3: the predicted map of each joint over the "
        "crop (cyan cross: the decoded keypoint); rows 2 and 4: the training target (white ring: the true "
        "keypoint). The first column draws the whole predicted skeleton (orange: left limbs, blue: right, "
        "green: head and trunk) and the labelled truth.")), body, _cost(len(shown), what="samples drawn"))


def heatmaps_finding(confidence, twins) -> str:
    """The drawn samples' most and least confident joints and the share of left/right keypoints that land on
    their twin: the two things a reader checks first in the maps."""
    mean = np.nanmean(np.asarray(confidence, np.float64).reshape(-1, len(KEYPOINT_NAMES)), axis=0)
    text = ""
    if np.isfinite(mean).any():
        high, low = int(np.nanargmax(mean)), int(np.nanargmin(mean))
        text = (f"On the samples drawn the network is most confident of the {KEYPOINT_NAMES[high]} (mean peak "
                f"{fmt(mean[high], 2)}) and least of the {KEYPOINT_NAMES[low]} ({fmt(mean[low], 2)}). ")
    if twins["considered"]:
        text += (f"{100 * twins['swapped'] / twins['considered']:.1f}% of the left or right keypoints whose twin is "
                 "labelled land on the twin instead.")
    else:
        text += "No left or right keypoint has its twin labelled, so no swap is counted."
    return text


def activations_section(crops, stages: dict) -> Section:
    body = []
    for i in range(len(crops)):
        per_sample = {name: maps[i] for name, maps in stages.items()}
        body += [f"<h3>sample {i + 1}</h3>", image(figures.activation_figure(crops[i].numpy(), per_sample),
                                                   f"activations of sample {i + 1}")]
    small = [name for name, maps in stages.items() if maps.shape[-1] <= figures.SMALL_STAGE]
    if small:
        side = figures.SMALL_STAGE
        body.append(paragraph(f"Stages of {side}x{side} pixels or fewer ({', '.join(small)}) "
                              "are printed as numbers: as colours each would be a flat tile.", "note"))
    return report_section("Activations", opening(activations_finding(stages), (
        "The feature maps the hourglass computes, one row per stage, on the way down and back up: the stem's "
        "output; down i, level i after max-pooling and its first residual (half the resolution each time); "
        "the bottleneck at the lowest resolution; then up i, the output of level i, where the upsampled "
        "coarse features are added to that level's skip branch. The first map of a row is the mean over all "
        "channels, the others are the channels with the largest mean activation on this sample. Each tile is "
        "scaled to its own range, so compare shapes, not brightness between tiles. What each stage encodes "
        "about the joints is measured, not eyeballed, in the next section.")), body,
        _cost(len(crops), what="samples drawn"))


def activations_finding(stages: dict) -> str:
    """Where the drawn activations are largest and most concentrated: the mean activation per stage, and the
    stage whose channel-mean map puts the largest share of its mass in its brightest tenth of pixels."""
    if not stages:
        return ""
    names = list(stages)
    means = [float(np.mean(np.asarray(maps, np.float64))) for maps in stages.values()]
    concentration = []
    for maps in stages.values():
        if np.asarray(maps).shape[-1] <= figures.SMALL_STAGE:  # a few pixels are concentrated by construction
            concentration.append(float("nan"))
            continue
        mean_map = np.abs(np.asarray(maps, np.float64).mean(axis=1)).reshape(len(maps), -1)
        top = max(1, mean_map.shape[1] // 10)
        mass = mean_map.sum(1)
        concentration.append(float(np.mean(np.sort(mean_map, 1)[:, -top:].sum(1) / np.maximum(mass, 1e-12))))
    largest = int(np.argmax(means))
    text = f"On the samples drawn the mean activation is largest at {names[largest]} ({fmt(means[largest], 2)})"
    if not np.isfinite(concentration).any():
        return text + "."
    focused = int(np.nanargmax(concentration))
    return text + (f"; of the stages drawn as colours, the channel-mean map is most concentrated at {names[focused]} "
                   f"(its brightest tenth of pixels holds {concentration[focused]:.0%} of the map, 10% if flat).")


# --- 3, 4: probes and CKA, over training --------------------------------------------------------------


def stage_labels(pixel) -> list[str]:
    """Each probed stage with its side and, in brackets, its ceiling (the PCK of the true targets at that side,
    decoded the same way), e.g. 'down2 4x4 (.44)'."""
    return [f"{s} {r}x{r} ({fmt(np.nanmean(c), 2).replace('0.', '.')})"
            for s, r, c in zip(pixel.stages, pixel.sides, pixel.ceiling)]


def pixel_matrix(pixel, output_pck) -> tuple[np.ndarray, list[str]]:
    """The per-pixel probe's stages x joints PCK with two reference rows below, and the row labels: the
    network's own PCK on the probe samples, and chance."""
    return (np.vstack([pixel.pck, np.asarray(output_pck)[None], pixel.chance[None]]),
            [*stage_labels(pixel), f"{OUTPUT_STAGE} (the network)", "chance (mean map)"])


def encoding_stage(pixel, output_pck) -> list[int | None]:
    """Per joint, the first stage (in the network's order) whose read-out closes PROBE_SHARE of the gap from
    chance to the network's own PCK, or None (also when the network is no better than chance)."""
    found = []
    for j in range(len(output_pck)):
        gap = output_pck[j] - pixel.chance[j]
        level = pixel.chance[j] + PROBE_SHARE * gap
        reaching = np.flatnonzero(np.nan_to_num(pixel.pck[:, j], nan=-np.inf) >= level) if gap > 0 else []
        found.append(int(reaching[0]) if len(reaching) else None)
    return found


def pixel_findings(pixel, output_pck) -> list[tuple[str, ...]]:
    """Per joint: (joint, best stage, its PCK, the encoding stage or '-', the network's PCK, chance)."""
    rows = []
    for j, (name, first) in enumerate(zip(KEYPOINT_NAMES, encoding_stage(pixel, output_pck))):
        column = pixel.pck[:, j]
        best = int(np.nanargmax(column)) if np.isfinite(column).any() else None
        rows.append((name, "-" if best is None else pixel.stages[best], "-" if best is None else fmt(column[best], 2),
                     "-" if first is None else pixel.stages[first], fmt(output_pck[j], 2), fmt(pixel.chance[j], 2)))
    return rows


def pixel_notes(pixel, output_pck, cka) -> str:
    """The section's computed sentences: PCK by stage against the network and chance, where joints become
    readable, which stages their grid limits, and the largest change of representation."""
    mean = np.nanmean(pixel.pck, axis=1) if np.isfinite(pixel.pck).any() else np.full(len(pixel.stages), np.nan)
    by_stage: dict[str, list[str]] = {}
    for j, first in enumerate(encoding_stage(pixel, output_pck)):
        by_stage.setdefault("no stage" if first is None else pixel.stages[first], []).append(figures.SHORT_NAMES[j])
    coarse = [s for s, c in zip(pixel.stages, pixel.ceiling) if np.nanmean(c) < 0.2]
    text = ("Held-out PCK averaged over joints, by stage: " + ", ".join(f"{s} {fmt(v, 2)}" for s, v in
                                                                         zip(pixel.stages, mean))
            + f"; the network's own {fmt(np.nanmean(output_pck), 2)}, chance {fmt(np.nanmean(pixel.chance), 2)}. "
            f"First stage closing {PROBE_SHARE:.0%} of the gap from chance to the network's PCK: "
            + "; ".join(f"{stage}: {', '.join(joints)}" for stage, joints in by_stage.items()) + ".")
    if coarse:
        text += (f" {', '.join(coarse)} cannot place a joint within the PCK radius even from their true targets "
                 "(ceiling under 0.2): for them, read the pooled probe below.")
    labels = list(pixel.stages)
    if cka is not None and len(labels) > 1:
        neighbours = [cka[i, i + 1] for i in range(len(labels) - 1)]
        change = int(np.nanargmin(neighbours))
        text += (f" The largest change of representation between neighbouring stages is from {labels[change]} to "
                 f"{labels[change + 1]} (CKA {fmt(neighbours[change], 2)}).")
    return text


def probes_finding(pixel, output_pck) -> str:
    """The per-pixel probe's headline: the stage read best, against the network and chance, and how many
    joints some stage already reads nearly as well as the network."""
    if not np.isfinite(pixel.pck).any():
        return "No stage's read-out could be scored on these samples."
    mean = np.nanmean(np.where(np.isfinite(pixel.pck), pixel.pck, np.nan), axis=1)
    best = int(np.nanargmax(mean))
    encoded = sum(first is not None for first in encoding_stage(pixel, output_pck))
    return (f"A linear read-out of {pixel.stages[best]} places the joints best (held-out PCK {fmt(mean[best], 2)} "
            f"averaged over joints, against the network's {fmt(np.nanmean(output_pck), 2)} and chance "
            f"{fmt(np.nanmean(pixel.chance), 2)}); for {encoded} of the {len(output_pck)} joints some stage closes "
            f"{PROBE_SHARE:.0%} of the gap from chance to the network.")


def ceiling_note(pixel) -> str:
    """Where a read-out exceeds its row's mean ceiling but not its joint's own: the per-joint ceilings explain it."""
    mean = np.nanmean(pixel.ceiling, axis=1, keepdims=True)
    above_row = np.nan_to_num(pixel.pck, nan=-1) > mean
    above_own = np.nan_to_num(pixel.pck, nan=-1) > np.nan_to_num(pixel.ceiling, nan=np.inf) + 1e-9
    return (f"{int(above_row.sum())} of the stage-joint read-outs exceed their row's mean ceiling, since a joint's "
            "own ceiling depends on where it usually lies on the stage's grid; "
            f"{int(above_own.sum())} exceed their own joint's ceiling (possible when the read-out's decoding lands "
            "nearer the truth than the area-averaged target's peak).")


def probes_section(pixel, output_pck, pooled, cka, seconds: float) -> Section:
    """pixel: probes.PixelProbes; output_pck (K,) the network's per-joint PCK on the same samples; pooled:
    probes.Probes with the decoded keypoints as its last row (OUTPUT_STAGE); cka (S, S) between the stages."""
    matrix, rows = pixel_matrix(pixel, output_pck)
    pooled_mean = np.nanmean(pooled.position_r2, axis=1) if np.isfinite(pooled.position_r2).any() else None
    body = [
        image(figures.matrix_figure(matrix, rows, figures.SHORT_NAMES,
                                    "per-pixel read-out: held-out PCK of each joint from "
                               "each stage (row: stage, side, ceiling)", vmin=0, vmax=1, label="PCK"),
              "per-pixel probe PCK per stage and joint"),
        paragraph(pixel_notes(pixel, output_pck, cka), "note"),
        image(figures.matrix_figure(pixel.ceiling, pixel.stages, figures.SHORT_NAMES,
                                    "ceiling per stage and joint: PCK of the "
                               "true targets at the stage's side (a joint's own ceiling; the row labels give "
                               "the mean over joints)", vmin=0, vmax=1, label="PCK"), "per-joint ceilings"),
        paragraph(ceiling_note(pixel), "note"),
        table(("joint", "best stage", "its PCK", f"first stage closing {PROBE_SHARE:.0%} of the gap", "network",
               "chance"), pixel_findings(pixel, output_pck)),
        image(figures.matrix_figure(pixel.visible_auroc, pixel.stages, figures.SHORT_NAMES,
                                    "per-pixel read-out: held-out "
                               "AUROC of its peak height for 'labelled visible' (v = 2) (0.5: chance)", vmin=0.5,
                               vmax=1, label="AUROC"), "visibility from the per-pixel probe"),
        "<h3>pooled read-out of the coordinates</h3>",
        image(figures.matrix_figure(pooled.position_r2, pooled.stages, figures.SHORT_NAMES,
                                    "pooled probe: held-out R² of "
                               "each joint's (x, y) from features pooled to at most 4x4 (0: no better than "
                               "predicting the mean position; below 0, worse)",
                               vmin=0, vmax=1, label="R²"), "pooled probe R² per stage and joint"),
    ]
    if pooled_mean is not None:
        body.append(paragraph("Pooled probe, held-out R² averaged over joints: " + ", ".join(
            f"{s} {fmt(v, 2)}" for s, v in zip(pooled.stages, pooled_mean)) + ".", "note"))
    body.append(image(figures.matrix_figure(cka, pixel.stages, pixel.stages, "linear CKA between stages (1: the same "
                                       "representation up to rotation and scale)", vmin=0, vmax=1, label="CKA",
                                       cell=0.6), "CKA between stages"))
    return report_section("Where joint information lives", opening(probes_finding(pixel, output_pck), (
        "The per-pixel probe asks of every stage what the network's head does with its last features: at each "
        "location a linear map from the stage's channels (ridge regression in closed form, "
        f"{pixel.folds}-fold cross-validated with whole samples held out, its penalty chosen inside the training "
        "folds) is fitted to the 17 training heatmaps resampled to the stage's resolution, and the held-out maps "
        "are decoded as the network's are (peak, quarter-pixel step) and scored with the seed's PCK. A stage "
        "cannot place a joint more finely than its grid, so each row names the stage's side and, in brackets, "
        "the PCK its true targets reach at that side (its ceiling); the last two rows are the network's own PCK "
        "on these samples and chance (each fold guesses the peak of the other folds' mean target map), and the "
        "second matrix scores the read-out's peak height as a sign that the joint is labelled visible (AUROC). "
        "Below: the pooled probe (ridge regression of each joint's (x, y) from activations average-pooled to at "
        "most 4x4 cells, held-out R², 'output' probing the network's decoded keypoints the same way), the one "
        "that can find position coded in the channels of the coarsest stages, and linear CKA between stages.")),
        body,
        f"{pixel.samples} samples ({int(pixel.counted.min())}-{int(pixel.counted.max())} labelled keypoints per "
        f"joint), {len(pixel.stages)} stages x 17 joints; the per-pixel probe takes two forward passes, its ridge "
        f"fits solved in closed form from per-fold sums; the pooled probe and CKA use the same samples; "
        f"{seconds:.1f} s.")


def _first_reaching(values, epochs, share: float = 0.9):
    """The first epoch whose value reaches `share` of the last epoch's, or None (NaN or a last value <= 0)."""
    final = values[-1]
    if not np.isfinite(final) or final <= 0:
        return None
    return int(epochs[np.flatnonzero(np.nan_to_num(values, nan=-np.inf) >= share * final)[0]])


def _cka_series(trajectory) -> np.ndarray:
    """(S, E) CKA with the previous analysed epoch (older trajectories without it: CKA to the last epoch)."""
    previous = trajectory.cka_to_previous
    return (previous if np.size(previous) else trajectory.cka_to_final).T


def _analysed_sentence(trajectory, analysed: int | None) -> str:
    """Which epoch the other sections analyse, and whether the run's last epoch is an outlier."""
    text = (f"The other sections analyse epoch {analysed}." if analysed is not None else
            "The other sections analyse the given checkpoint, not one of these epochs.")
    losses = trajectory.val_loss
    if trajectory.outlying_end():
        text += (f" The last epoch, {trajectory.epochs[-1]}, is an outlier: its validation loss "
                 f"{losses[-1]:.4g} is {losses[-1] / trajectory.best_val_loss:.1f} times the run's best "
                 f"({trajectory.best_val_loss:.4g}), so read its values as that epoch's, not as where training "
                 "settled.")
    return text


def _stability_sentence(trajectory) -> str:
    """From which analysed epoch on every stage's CKA with the previous analysed epoch stays at or above 0.9."""
    series = np.asarray(trajectory.cka_to_previous, np.float64)
    if series.size == 0 or len(trajectory.epochs) < 2:
        return "Fewer than two epochs analysed: no change between epochs to measure."
    stable = np.nan_to_num(series[1:], nan=0.0).min(axis=1) >= 0.9  # (E - 1,)
    lowest = int(np.nanargmin(np.nanmin(series[1:], axis=0)))
    at = int(np.nanargmin(series[1:, lowest])) + 1
    tail = np.flatnonzero(~stable)
    text = (f"The largest change between successive epochs analysed is {trajectory.stages[lowest]}'s from epoch "
            f"{trajectory.epochs[at - 1]} to {trajectory.epochs[at]} (CKA {fmt(series[at, lowest], 2)}).")
    if not len(tail):
        return text + " Every stage's CKA with the previous epoch analysed is 0.9 or more throughout."
    if tail[-1] + 1 < len(stable):
        return text + (f" From epoch {trajectory.epochs[tail[-1] + 2]} on, every stage's CKA with the previous "
                       "epoch analysed is 0.9 or more.")
    return text + " Some stage still changes (CKA under 0.9) between the last two epochs analysed."


def trajectory_section(trajectory, run, every: int, seconds: float, marks: dict | None = None,
                       compared: str = "", analysed: int | None = None) -> Section:
    """marks: {label: epoch} drawn on every figure; compared: a sentence added to the explanation (the
    comparison page says there what this one run's history has to do with its two models)."""
    epochs = trajectory.epochs
    drop = trajectory.lr_drop
    probe_mean = {s: np.nanmean(trajectory.probe_pck[:, i], axis=1) if np.isfinite(trajectory.probe_pck[:, i]).any()
                  else np.full(len(epochs), np.nan) for i, s in enumerate(trajectory.stages)}
    network = np.nanmean(trajectory.per_joint_pck, axis=1)
    chance = float(np.nanmean(trajectory.probe_chance))
    body = [
        image(figures.epoch_figure(epochs, {**{"all joints (pooled)": trajectory.pck},
                                       **{n: trajectory.per_joint_pck[:, j] for j,
                                          n in enumerate(figures.SHORT_NAMES)}},
                              "PCK per joint on the probe samples", "PCK", drop, (0, 1), marks), "PCK per epoch"),
        image(figures.epoch_figure(epochs, probe_mean, "per-pixel probe: held-out PCK averaged over joints, per stage",
                              "PCK", drop, (0, 1), marks, {"the network (its own PCK)": network,
                                                           "chance (mean map)": np.full(len(epochs), chance)}),
              "per-pixel probe PCK per epoch"),
        image(figures.epoch_figure(epochs, dict(zip(trajectory.stages, _cka_series(trajectory))),
                              "linear CKA of each stage with the same stage at the previous epoch analysed", "CKA",
                              drop, (0, 1.02), marks), "CKA to the previous epoch analysed"),
        image(figures.epoch_figure(epochs, {f"level {i + 1}": trajectory.skip_share[:, i]
                                       for i in range(trajectory.skip_share.shape[1])},
                              "skip share of each level's output RMS, skip / (skip + low)", "skip share", drop,
                              (0, 1), marks), "skip share per epoch"),
    ]
    reached = _first_reaching(trajectory.pck, epochs)
    facts = [_analysed_sentence(trajectory, analysed),
             f"Pooled PCK on these samples goes from {fmt(trajectory.pck[0])} at epoch {epochs[0]} to "
             f"{fmt(trajectory.pck[-1])} at epoch {epochs[-1]}"
             + (f"; it first reaches 90% of its final value at epoch {reached}." if reached else ".")]
    # stages whose last read-out is clearly above chance: when each gets there, against the network itself
    informative = [s for s in trajectory.stages if np.isfinite(probe_mean[s][-1]) and probe_mean[s][-1] > chance + 0.05]
    if informative:
        facts.append("Per-pixel probe, mean PCK over joints from the first to the last epoch analysed: " + ", ".join(
            f"{s} {fmt(probe_mean[s][0], 2)} to {fmt(probe_mean[s][-1], 2)} (90% of it by epoch "
            f"{_first_reaching(probe_mean[s], epochs)})" for s in informative)
            + f"; the network's own {fmt(network[0], 2)} to {fmt(network[-1], 2)} (epoch "
            f"{_first_reaching(network, epochs)}), chance {fmt(chance, 2)}.")
    facts.append(_stability_sentence(trajectory))
    facts.append(f"The learning rate drops at epoch {drop}." if drop else "The learning rate never drops in this run.")
    body.insert(1, paragraph(" ".join(facts), "note"))
    return report_section("Over training", (
        f"The same measurements at the per-epoch checkpoints of {run} (the first epoch, every {every} epochs and "
        "the last): per-joint PCK, the per-pixel probe of the previous section averaged over joints (with the "
        "network's own PCK and chance), how much each stage still changes between successive epochs analysed "
        "(linear CKA with the same stage at the previous one: 1 means unchanged up to rotation and scale; a "
        "comparison with the last epoch would be 1 there by definition), and the skip/low balance of the next "
        "section. The dashed line marks the learning-rate drop. A stage's read-out "
        "rising before the network's PCK would mean the information is there before the head reads it out."
        + (f" {compared}" if compared else "")), body,
        f"{len(epochs)} epochs ({', '.join(map(str, epochs))}) x {trajectory.samples} samples: per epoch the "
        f"per-pixel probe, CKA, skip shares and PCK; {seconds:.1f} s.")


# --- 5, 6, 7: skip vs low, saliency, attributions -------------------------------------------------------


def branch_section(contributions, study, changes, config) -> Section:
    def change(level: int, branch: str) -> str:
        i = study.names.index(f"level {level} {branch}")
        return f"{study.overall[i] - study.overall[0]:+.3f} [{changes.low[i]:+.3f}, {changes.high[i]:+.3f}]"

    rows = [(f"level {i + 1}", f"{r}x{r}", fmt(s), fmt(lo), f"{100 * sh:.0f}%", change(i + 1, "skip"),
             change(i + 1, "low"))
            for i, (r, s, lo, sh) in enumerate(zip(contributions.resolution, contributions.skip,
                                                   contributions.low, contributions.skip_share))]
    dominant = int(np.argmax(contributions.low / np.maximum(contributions.skip, 1e-12)))
    lesions = study.overall[1:] - study.overall[0]
    worst = int(np.argmin(lesions)) + 1
    longest = 2 * config.depth * config.residuals_per_level + config.innermost_residuals
    finding = branch_finding(study, changes)
    return report_section("Skip vs low branch", opening(finding, (
        "Every level of the hourglass outputs the sum of two branches: the skip branch, a residual at the "
        "level's own resolution, and the low branch, everything computed at coarser resolutions, upsampled. "
        "The bars are the root-mean-square size of each branch's contribution. That size grows with the depth "
        "of a branch by construction: every pre-activation residual adds its output to its input, and the low "
        f"branch of level 1 chains up to {longest} residuals against the skip branch's "
        f"{config.residuals_per_level}, so a larger "
        "low RMS at the outer levels is expected of any such network, trained or not. The size-independent "
        "measure is in the last two columns: the change in PCK when that branch is zeroed (the lesion study, "
        "with its 95% paired bootstrap interval).")), [
        image(figures.branch_figure(contributions), "skip and low branch sizes per level"),
        table(("level", "resolution", "skip RMS", "low RMS", "skip share", "PCK change, skip zeroed",
               "PCK change, low zeroed"), rows),
        paragraph(f"By size, the low branch weighs most relative to the skip branch at level {dominant + 1} "
                  f"({contributions.resolution[dominant]}x{contributions.resolution[dominant]}); by effect, zeroing "
                  f"the {study.branch[worst]} branch of level {study.level[worst]} costs the most PCK "
                  f"({lesions[worst - 1]:+.3f}).", "note"),
    ], _cost(contributions.samples))


def branch_finding(study, changes) -> str:
    """The branch whose removal costs the most PCK, and whether its paired interval shows a loss at all."""
    lesions = study.overall[1:] - study.overall[0]
    worst = int(np.argmin(lesions)) + 1
    where = f"the {study.branch[worst]} branch of level {study.level[worst]}"
    interval = f"95% paired interval {changes.low[worst]:+.3f} to {changes.high[worst]:+.3f}"
    if lesions[worst - 1] >= 0:
        return (f"Zeroing no branch lowers PCK on these samples (the smallest change, {where}: "
                f"{lesions[worst - 1]:+.3f}, {interval}).")
    return (f"Zeroing {where} costs the most PCK ({lesions[worst - 1]:+.3f}, {interval})"
            + ("." if changes.high[worst] < 0 else "; the interval reaches zero, so no branch is shown to matter."))


def people_interval(values, resamples: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean of the finite entries of values (N, ...) and its 95% percentile bootstrap
    interval over the N people (rows), so that one person's joints move together. NaN bounds for N < 2."""
    values = np.asarray(values, np.float64).reshape(len(values), -1)
    finite = np.isfinite(values)
    sums, counts = np.where(finite, values, 0).sum(1), finite.sum(1)
    mean = float(sums.sum() / counts.sum()) if counts.sum() else float("nan")
    if len(values) < 2 or not counts.sum():
        return mean, float("nan"), float("nan")
    draws = np.random.default_rng(seed).integers(0, len(values), size=(resamples, len(values)))
    with np.errstate(invalid="ignore", divide="ignore"):
        resampled = sums[draws].sum(1) / counts[draws].sum(1)
    low, high = np.nanpercentile(resampled, [2.5, 97.5])
    return mean, float(low), float(high)


def saliency_section(crops, maps, coords, shares, uniform) -> Section:
    body = []
    for i in range(len(crops)):
        figure = figures.saliency_figure(crops[i].numpy(), maps[i], coords[i], shares[i])
        body += [f"<h3>sample {i + 1}</h3>", image(figure, f"saliency of sample {i + 1}")]
    mean, low, high = people_interval(shares)
    finding = (f"{mean:.0%} of each joint's saliency lies near the predicted joint, {mean / uniform:.1f} times what "
               "a map spread evenly would put there"
               + (f" (95% interval over the {len(crops)} samples {low / uniform:.1f}-{high / uniform:.1f} times)."
                  if np.isfinite(low) else "; one sample gives no interval."))
    return report_section("Saliency", opening(finding, (
        "For each joint: the gradient of that joint's heatmap peak with respect to every input pixel (the "
        "largest absolute value over the three colour channels), drawn over the greyed crop, each map scaled "
        "to its own maximum; the cross is the predicted joint. Bright pixels are those whose slightest "
        "change would move the joint's confidence most. The percentage after each name is the share of the "
        f"saliency within {SALIENCY_RADIUS:.0%} of the crop side of the predicted joint; a map spread evenly "
        f"over the crop would put {uniform:.0%} there. The next section checks whether such maps depend on "
        "the trained weights at all.")), body + [paragraph(
        f"Over these {len(crops)} samples x {maps.shape[1]} joints, {mean:.0%} of the saliency lies that close to "
        f"the predicted joint (95% interval over the {len(crops)} samples {fmt(100 * low, 0)}-{fmt(100 * high, 0)}%), "
        f"{mean / uniform:.1f} times the uniform share"
        + (f" ({low / uniform:.1f}-{high / uniform:.1f} times)." if np.isfinite(low) else
           "; one sample gives no interval.") + " So few samples give a wide interval: read it before the ratio.",
        "note")],
        _cost(len(crops), what="samples drawn"))


@dataclass
class AttributionResult:
    ig: np.ndarray  # (N, K, S, S)
    check: object  # hgpose.explore.attribution.RandomisationCheck
    deletion: dict  # {order: (M, F)} over the labelled (sample, joint) pairs
    labelled: np.ndarray  # (N, K) bool
    steps: int


def attribution_numbers(result: AttributionResult | None) -> dict:
    if result is None:
        return {"samples": 0}
    pairs = result.labelled
    return {
        "samples": len(result.labelled), "pairs": int(pairs.sum()), "ig_steps": result.steps,
        "rank_correlation_trained_vs_random": {
            "integrated_gradients": float(np.nanmean(result.check.integrated_gradients[pairs])),
            "input_gradient": float(np.nanmean(result.check.input_gradient[pairs]))},
        "deletion_fractions": list(DELETION_FRACTIONS),
        "deletion_mean_curve": {k: v.mean(axis=0) for k, v in result.deletion.items()},
        "deletion_area": {k: float(deletion_area(v).mean()) for k, v in result.deletion.items()},
    }


def attributed_joints(labelled_row, count: int = 4) -> list[int]:
    preferred = [j for j in ATTRIBUTED_JOINTS if labelled_row[j]]
    rest = [j for j in range(len(labelled_row)) if labelled_row[j] and j not in preferred]
    return (preferred + rest)[:count] or [0]


def attribution_section(crops, gradients, coords, result: AttributionResult | None, seconds: float) -> Section:
    intro = (
        "Integrated Gradients (Captum) attributes a joint's confidence to the pixels by integrating the gradient "
        "along the straight path from a uniform grey image to the crop, so the attributions add up to the "
        "change in confidence; the plain input gradient of the Saliency section is shown beside it. Two checks "
        "say whether a map is about the model: the model-randomisation test (Adebayo et al. 2018) recomputes "
        "the maps with every weight re-initialised and reports their rank correlation with the trained model's "
        "(near 0: the map depends on what was learned, passes; near 1: it mostly shows the image, fails); and a "
        "deletion curve replaces the most attributed pixels by grey first and follows the joint's confidence, "
        "against a random order (a faithful map makes it fall faster: lower mean confidence).")
    if result is None:
        return report_section("Attributions, checked", intro, [paragraph(
            "No sample was chosen for attributions (--attribution-samples 0).", "note")], "0 samples.")
    check, pairs = result.check, result.labelled
    body = []
    for i in range(len(crops)):
        joints = attributed_joints(pairs[i])
        correlations = np.stack([check.input_gradient[i, joints], check.integrated_gradients[i, joints]], axis=1)
        figure = figures.attribution_figure(crops[i].numpy(), joints, gradients[i, joints], result.ig[i, joints],
                                       check.random_maps_gradient[i, joints], check.random_maps_ig[i, joints],
                                       coords[i], correlations)
        body += [f"<h3>sample {i + 1}</h3>", image(figure, f"attributions of sample {i + 1}")]
    ig_rho = float(np.nanmean(check.integrated_gradients[pairs]))
    grad_rho = float(np.nanmean(check.input_gradient[pairs]))
    difference = np.where(pairs, check.integrated_gradients - check.input_gradient, np.nan)
    _, diff_low, diff_high = people_interval(difference)
    if np.isfinite(diff_low) and (diff_low > 0 or diff_high < 0):
        verdict = (f"{'IG' if diff_high < 0 else 'the gradient'} changes more: the paired 95% interval over the "
                   f"{len(crops)} samples of IG minus gradient, {diff_low:+.2f} to {diff_high:+.2f}, excludes 0")
    else:
        verdict = ("neither changes clearly more: the paired 95% interval of IG minus gradient "
                   + (f"{diff_low:+.2f} to {diff_high:+.2f} includes 0" if np.isfinite(diff_low) else
                      "needs at least 2 samples"))
    areas = {k: float(deletion_area(v).mean()) for k, v in result.deletion.items()}
    rows = [("Integrated Gradients", fmt(ig_rho), fmt(areas["Integrated Gradients"])),
            ("input gradient", fmt(grad_rho), fmt(areas["input gradient"])),
            ("random order", "-", fmt(areas["random order"]))]
    count = int(pairs.sum())
    finding = attribution_finding(ig_rho, grad_rho, verdict, areas)
    body += [
        image(figures.deletion_figure(DELETION_FRACTIONS, result.deletion, count), "deletion curves"),
        table(("map", "rank correlation, trained vs randomised model", "deletion: mean confidence"), rows),
        paragraph(
            f"Over {count} labelled sample-joint pairs: under weight randomisation Integrated Gradients keeps a rank "
            f"correlation of {ig_rho:.2f} and the input gradient {grad_rho:.2f} "
            f"({verdict}). Removing pixels in "
            f"IG's order gives a mean confidence of {areas['Integrated Gradients']:.3f}, in the gradient's "
            f"{areas['input gradient']:.3f}, in random order {areas['random order']:.3f}.", "note"),
    ]
    return report_section("Attributions, checked", opening(finding, intro), body,
                    f"{len(crops)} samples x 17 joints, IG with {result.steps} steps; the randomised model's maps "
                    f"and {len(DELETION_FRACTIONS)}-point deletion curves in 3 orders; {seconds:.1f} s.")


def attribution_finding(ig_rho: float, grad_rho: float, verdict: str, areas: dict) -> str:
    """Whether the maps pass the randomisation check (rank correlation with the randomised model's maps under
    RANDOMISATION_PASS) and whether IG's deletion order beats a random one."""
    passing = [name for name, rho in (("Integrated Gradients", ig_rho), ("the input gradient", grad_rho))
               if np.isfinite(rho) and rho < RANDOMISATION_PASS]
    checked = (f"{' and '.join(passing)} {'pass' if len(passing) > 1 else 'passes'} the randomisation check"
               if passing else "Neither map passes the randomisation check")
    faster = areas["Integrated Gradients"] < areas["random order"]
    return (f"{checked} (rank correlation with the randomised model's maps {fmt(ig_rho, 2)} for IG, "
            f"{fmt(grad_rho, 2)} for the gradient; {verdict}), and deleting pixels in IG's order lowers the "
            f"confidence {'more' if faster else 'no more'} than a random order "
            f"({areas['Integrated Gradients']:.3f} against {areas['random order']:.3f}).")


# --- 8, 9: occlusion, joint dependency ------------------------------------------------------------------


def occlusion_section(crops, results, input_size: int) -> Section:
    body = []
    local = considered = 0
    for i, (crop, result) in enumerate(zip(crops, results)):
        body += [f"<h3>sample {i + 1}: confidence drop</h3>",
                 image(figures.occlusion_figure(crop.numpy(), result, "confidence_drop"), "confidence drop"),
                 f"<h3>sample {i + 1}: location shift (input pixels)</h3>",
                 image(figures.occlusion_figure(crop.numpy(), result, "shift"), "location shift")]
        centres = result.centres
        for j in range(len(result.confidence_drop)):
            y, x = np.unravel_index(np.argmax(result.confidence_drop[j]), result.confidence_drop[j].shape)
            distance = np.hypot(centres[x] - result.coords[j, 0], centres[y] - result.coords[j, 1])
            local += int(distance <= result.patch)
            considered += 1
    finding = ""
    if not results:
        body.append(paragraph("No sample was chosen for occlusion maps (--occlusion-samples 0).", "note"))
    else:
        finding = (f"For {local} of the {considered} sample-joint maps ({local / considered:.0%}) the most damaging "
                   "patch covers the joint's own predicted position (centred within one patch width of it); for "
                   f"the other {considered - local} it lies elsewhere on the crop.")
    patch, stride = analyses.occlusion_defaults(input_size)
    return report_section("Occlusion sensitivity", opening(finding, (
        f"A grey square of {patch}x{patch} input pixels is slid over the crop in steps of {stride} "
        "pixels and the network is run again at every position. Each joint's first map shows how much its "
        "confidence falls when the square covers that spot (red: falls, blue: rises), the second how far "
        "its predicted location moves. Every map has its own colour scale, shown by its colour bar, so a joint "
        "that barely reacts is as visible as one that reacts strongly: read the bar before comparing joints. "
        "Unlike saliency, which asks about infinitesimal changes, this asks about hiding a whole region.")), body,
        _cost(len(results), what="samples") if results else "0 samples.")


def dependency_findings(dependency) -> tuple[str, str]:
    """(opening sentence, note): the pairs that survive both checks (joints outside each other's occluder, a
    95% interval over samples above zero), and the strongest pairs set aside because their joints overlap."""
    survivors = dependency.surviving_pairs(5) if dependency.per_sample_drop is not None else []
    passing = len(dependency.surviving_pairs(10**6)) if survivors else 0
    tested = int((~dependency.inside_occluder() & ~np.eye(len(dependency.masked), dtype=bool)).sum())
    inside = dependency.inside_occluder()
    hidden = [(i, j, v) for i, j, v in dependency.strongest_pairs(5) if inside[i, j]]
    if survivors:
        opening = ("Joints whose prediction relies on the image around another joint (outside its occluder, 95% "
                   "interval above zero): " + "; ".join(
                       f"hiding {KEYPOINT_NAMES[j]} lowers {KEYPOINT_NAMES[i]}'s confidence by {v:.3f} "
                       f"({lo:.3f} to {hi:.3f})" for i, j, v, lo, hi in survivors)
                   + f". {passing} of the {tested} pairs tested pass; about {0.025 * tested:.0f} would by chance "
                   "alone at this level, so weak ones may be noise.")
    else:
        opening = ("No pair of joints lying outside each other's occluder shows a confidence drop whose 95% interval "
                   "over samples lies above zero: on these samples no joint is shown to rely on another.")
    note = ""
    if hidden:
        note = ("Set aside, because their joints lie a median closer than the occluder's radius "
                f"({dependency.radius:g} px), so that hiding one hides the other: " + "; ".join(
                    f"{KEYPOINT_NAMES[i]} when {KEYPOINT_NAMES[j]} is hidden ({v:.3f}, joints "
                    f"{dependency.separation[i, j]:.1f} px apart)" for i, j, v in hidden) + ".")
    return opening, note


def dependency_section(dependency, samples: int, seconds: float) -> Section:
    names = list(figures.SHORT_NAMES)
    twin_values = [dependency.confidence_drop[j, t] for j in range(17) if (t := twin_of(j)) is not None]
    off = dependency.confidence_drop[~np.eye(17, dtype=bool)]
    twin_mean, off_mean = float(np.nanmean(twin_values)), float(np.nanmean(off))
    opening, set_aside = dependency_findings(dependency)
    shown = np.where(dependency.inside_occluder(), np.nan, dependency.confidence_drop)
    limit = np.nanmax(np.abs(dependency.confidence_drop))
    body = [
        image(figures.matrix_figure(shown, names, names, "confidence drop of joint (row) when joint (column) is hidden "
                               "(blank: the joints lie inside each other's occluder)", cmap="RdBu_r",
                               vmin=-limit, vmax=limit, label="confidence drop", cell=0.5),
              "joint dependency: confidence drop"),
        image(figures.matrix_figure(dependency.shift, names, names, "shift of joint (row), input pixels, when joint "
                               "(column) is hidden", cmap="Greens", vmin=0, label="input pixels", cell=0.5),
              "joint dependency: location shift"),
        paragraph(f"Between left/right twins the mean drop is {twin_mean:.3f}, against {off_mean:.3f} over all "
                  f"off-diagonal pairs. {set_aside}", "note"),
    ]
    return report_section("Joint dependency", (
        f"{opening} Which joints the model looks at to find a joint: in every sample each labelled joint j in turn "
        f"is hidden under a grey disc of radius {dependency.radius:g} input pixels (the occlusion patch's size) at "
        "its true position, and every joint i's confidence drop and location shift are recorded; entry (i, j) "
        "is the mean over the samples where j is labelled. The diagonal is a joint hiding itself. A large "
        "off-diagonal entry means joint i's prediction relies on the image around joint j, unless the two "
        "joints lie so close that the disc covers both: such pairs are left blank and set aside."), body,
        f"{samples} samples, {int(dependency.masked.sum())} masked keypoints (one forward pass each), {seconds:.1f} s.")


# --- 10, 11, 12: lesions, calibration, failures --------------------------------------------------------


def lesion_section(study, n: int, values, changes, seconds: float) -> Section:
    intact = study.overall[0]
    rows = [(name + (" zeroed" if branch else ""), fmt(v), f"{lo:.3f}-{hi:.3f}",
             "" if not branch else f"{v - intact:+.3f}", "" if not branch else f"{clo:+.3f} to {chi:+.3f}")
            for name, branch, v, lo, hi, clo, chi in zip(study.names, study.branch, study.overall, values.low,
                                                        values.high, changes.low, changes.high)]
    worst = int(np.argmin(study.overall[1:])) + 1
    clear = [name for name, lo, hi in zip(study.names[1:], changes.low[1:], changes.high[1:]) if hi < 0]
    opening = (f"{len(clear)} of the {len(study.names) - 1} lesions lower PCK beyond their paired interval"
               + (f" ({', '.join(clear)})" if clear else "") + f"; the largest loss, zeroing the "
               f"{study.branch[worst]} branch of level {study.level[worst]}, takes PCK from {intact:.3f} to "
               f"{study.overall[worst]:.3f}. ")
    return report_section("Lesion study", opening + (
        "Each level's skip branch, then its low branch, is replaced by zeros in turn (the level then outputs "
        f"only the other branch) and the PCK over the {n} samples is measured again, against the intact "
        "model. Zeroing the low branch of level i removes everything coarser than that level; zeroing its "
        "skip branch removes the detail at that resolution. The network was never trained to work without a "
        "branch, so a drop measures how much it relies on that scale, not whether the scale is redundant. "
        "Intervals are 95% bootstraps over people; the change's interval is paired (the same people resampled "
        "for both conditions)."), [
        image(figures.lesion_figure(study, values), "PCK with each branch zeroed"),
        table(("condition", "PCK", "95% interval", "change", "change, 95% interval"), rows),
    ], _cost(n, seconds))


def _least_calibrated(result, worst: int, low, high) -> str:
    """Name the least calibrated joint only when its ECE interval lies above the best-calibrated joint's."""
    best = int(np.nanargmin(result.per_joint_ece))
    if np.isfinite(low[worst]) and low[worst] > high[best]:
        return (f". The least calibrated joint is {KEYPOINT_NAMES[worst]} (ECE {fmt(result.per_joint_ece[worst])}, "
                f"{fmt(low[worst])}-{fmt(high[worst])}), beyond the interval of the best, {KEYPOINT_NAMES[best]} "
                f"({fmt(result.per_joint_ece[best])}, {fmt(low[best])}-{fmt(high[best])}).")
    return (f". No joint is clearly the least calibrated: the largest per-joint ECE, {KEYPOINT_NAMES[worst]}'s "
            f"{fmt(result.per_joint_ece[worst])}, has an interval ({fmt(low[worst])}-{fmt(high[worst])}) overlapping "
            f"the smallest's ({KEYPOINT_NAMES[best]}, {fmt(low[best])}-{fmt(high[best])}).")


def calibration_section(result, samples: int, seconds: float, ece_interval=None) -> Section:
    """ece_interval: (low (K,), high (K,)) bootstrap intervals of the per-joint ECE, or None."""
    low, high = ece_interval if ece_interval is not None else (np.full(17, np.nan), np.full(17, np.nan))
    rows = [(name, str(int(c)), fmt(e), f"{fmt(lo)}-{fmt(hi)}", fmt(a)) for name, c, e, lo, hi, a in
            zip(KEYPOINT_NAMES, result.counted, result.per_joint_ece, low, high, result.per_joint_auroc)]
    gap = result.mean_confidence - result.accuracy
    verdict = ("over-confident" if gap > 0 else "under-confident") if abs(gap) > 1e-9 else "exactly calibrated"
    worst = int(np.nanargmax(result.per_joint_ece)) if np.isfinite(result.per_joint_ece).any() else None
    finding = (f"Over {int(result.counted.sum())} labelled keypoints the mean confidence is "
               f"{result.mean_confidence:.3f} and the fraction correct {result.accuracy:.3f}: the peak is "
               f"{verdict} on average by {abs(gap):.3f}. ECE {fmt(result.ece)}; AUROC {fmt(result.auroc)}"
               + (_least_calibrated(result, worst, low, high) if worst is not None else "."))
    opening = (f"On average the heatmap peak is {verdict} by {abs(gap):.3f} (mean confidence "
               f"{result.mean_confidence:.3f}, fraction correct {result.accuracy:.3f}). ")
    return report_section("Calibration", opening + (
        "Can the heatmap peak be read as the probability that the keypoint is right? Keypoints are grouped by "
        "confidence (the peak, clipped to [0, 1]) into ten bins, and each bin's fraction correct under the "
        "seed's PCK is drawn against its mean confidence: on the diagonal the peak is calibrated, below it "
        "over-confident. ECE (expected calibration error) is the count-weighted mean gap between the two; AUROC "
        "(scikit-learn) is how well the confidence ranks correct above wrong keypoints, whatever its scale "
        "(0.5: not at all, 1: perfectly)."), [
        image(figures.reliability_figure(result), "reliability diagram and per-joint calibration"),
        paragraph(finding, "note"),
        table(("joint", "keypoints", "ECE", "ECE, 95% interval over people", "AUROC"), rows),
    ], _cost(samples, seconds))


def worst_tiles(positions, data_set, coords, config, caption) -> list[tuple[bytes, str]]:
    """Gallery tiles of the samples at `positions`: the predicted skeleton (coords (N, K, 2), heatmap
    coordinates) and the labelled truth as white rings, captioned caption(position)."""
    tiles = []
    for position in positions:
        crop = data_set.images[position].numpy()
        pred = analyses.to_input_coords(coords[position], config.input_size, config.heatmap_size)
        truth = analyses.to_input_coords(data_set.keypoints[position], config.input_size, config.heatmap_size)
        drawn = figures.pose_on_crop(crop, pred, np.ones(len(pred)), truth, data_set.visibility[position],
                                scale=max(1, 256 // config.input_size))
        tiles.append((figures.encode_png(drawn), caption(position)))
    return tiles


def failures_section(result, data_set, coords, config, n: int, interval) -> Section:
    scale = config.input_size / config.heatmap_size
    tiles = worst_tiles(result.worst, data_set, coords, config,
                        lambda p: f"annotation {int(data_set.ann_ids[p])}: mean error "
                                  f"{result.errors[p] * scale:.1f} input px")
    return report_section("Where it fails", hardest_easiest(result.per_joint, interval) + " " + (
        f"Per-joint PCK over the {n} samples (the seed's: a keypoint is correct within 0.5 c of the truth, "
        f"c = {config.heatmap_size / 10:g} heatmap pixels; bars coloured by side, the number of "
        "labelled keypoints under each name, error bars the 95% bootstrap interval over people), then the "
        "samples with the largest mean distance between predicted and labelled keypoints: the predicted "
        "skeleton, and the labelled truth as white rings."), [
        image(figures.per_joint_figure(result.per_joint, result.counted, interval), "per-joint PCK"),
        "<h3>worst samples</h3>", gallery(tiles),
    ], _cost(n))


def hardest_easiest(per_joint, interval) -> str:
    """The hardest and easiest joint, named only when their bootstrap intervals do not overlap."""
    measured = np.flatnonzero(~np.isnan(per_joint))
    if not len(measured):
        return "None of these samples has a labelled keypoint on its heatmap."
    ranked = measured[np.argsort(per_joint[measured], kind="stable")]
    hardest, easiest = ranked[0], ranked[-1]
    described = (f"lowest PCK: {KEYPOINT_NAMES[hardest]} ({fmt(per_joint[hardest])}, interval "
                 f"{fmt(interval.low[hardest])}-{fmt(interval.high[hardest])}); highest: {KEYPOINT_NAMES[easiest]} "
                 f"({fmt(per_joint[easiest])}, {fmt(interval.low[easiest])}-{fmt(interval.high[easiest])})")
    if interval.overlaps(hardest, easiest):
        return (f"No joint is clearly hardest or easiest on these samples: the {described} have overlapping "
                "95% intervals.")
    return f"Hardest joint: {KEYPOINT_NAMES[hardest]}; easiest: {KEYPOINT_NAMES[easiest]} (the {described}; " \
           "the intervals do not overlap)."
