"""The explore report's analyses as named steps: each computes one section (and its numbers) from what
the report shares (the model, the sample sets, the options) and what earlier steps left in `done`.
report.analyse runs STEPS in order; the page shows their sections in that order."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from hgpose.evaluation.pck import counted_mask, normalized_distances, pck
from hgpose.explore import analyses, attribution, calibration, instrument_sections, sections
from hgpose.explore import report_instruments as instruments
from hgpose.explore.dependency import joint_dependency
from hgpose.explore.html import Section
from hgpose.explore.probes import cka_matrix, linear_probes, model_pixel_probes, pooled_stages
from hgpose.explore.receptive_field import effective_receptive_fields
from hgpose.explore.trajectory import analysed_epoch, training_trajectory
from hgpose.keypoints import KEYPOINT_NAMES


@dataclass
class Analysis:
    """What every step reads; `done` holds what a step leaves for later ones, `numbers` what goes to
    explore.json."""

    model: object
    loaded: object  # report.Samples: every loaded sample
    main: object  # the first `samples` of them: lesions, skip vs low, failures
    probe_set: object  # the first `probe_samples`: probes, facing, calibration
    shown: np.ndarray  # positions in `main` drawn in the per-sample figures
    normalizer: float
    timer: object
    device: object
    batch_size: int
    seed: int
    occlusion_samples: int
    dependency_samples: int
    attribution_samples: int
    ig_steps: int
    dissection_samples: int
    erf_samples: int
    run: object = None
    every: int = 5
    checkpoint: object = None
    done: dict = field(default_factory=dict)
    numbers: dict = field(default_factory=dict)

    @property
    def config(self):
        return self.model.config

    @property
    def crops(self) -> np.ndarray:
        return self.main.images[self.shown]


def lesions(a: Analysis) -> None:
    """Computed first (its section comes later): the skip-vs-low section shows its result next to the
    branch sizes."""
    main = a.main
    study = analyses.lesion_study(a.model, main.images, main.keypoints, main.visibility, a.normalizer,
                                  batch_size=a.batch_size)
    counted = counted_mask(main.visibility)
    correct = np.stack([normalized_distances(c, main.keypoints, a.normalizer) < 0.5 for c in study.coords])
    values, changes = calibration.pooled_pck_intervals(correct, counted, seed=a.seed)
    a.done.update(study=study, counted=counted, correct=correct, lesion_values=values, lesion_changes=changes,
                  lesion_seconds=a.timer.elapsed())


def heatmaps(a: Analysis) -> Section:
    main, shown, config = a.main, a.shown, a.config
    predicted = analyses.heatmaps(a.model, a.crops, a.batch_size)
    pred_coords, confidence = analyses.decode(predicted)
    a.done["pred_coords"] = pred_coords
    targets = analyses.target_heatmaps(main.keypoints[shown], main.visibility[shown], config.heatmap_size)
    twins = sections.twin_confusions(a.done["study"].coords[0], main.keypoints, main.visibility, a.normalizer)
    a.numbers["twin_confusions"] = twins
    return sections.heatmaps_section(a.crops, predicted, targets, pred_coords, confidence, main, shown, config,
                                     twins)


def stacks(a: Analysis) -> Section:
    stacked = instruments.stacks(a.model, a.main, a.shown, a.batch_size, a.seed, a.probe_set)
    first = a.shown[:2]
    a.numbers["stacks"] = (instrument_sections.stacks_numbers(stacked.study, stacked.pixel)
                           | {"seconds": a.timer.elapsed()})
    return instrument_sections.stacks_section(stacked.study, a.crops[:2], stacked.maps, a.main.keypoints[first],
                                              a.main.visibility[first], a.config, a.timer.elapsed(), stacked.pixel)


def activations(a: Analysis) -> Section:
    return sections.activations_section(a.crops[:2], analyses.activations(a.model, a.crops[:2],
                                                                          batch_size=a.batch_size))


def dissection(a: Analysis) -> Section:
    section, a.numbers["dissection"] = instruments.dissection(a.model, a.loaded.first(a.dissection_samples),
                                                              a.batch_size, a.seed, a.timer)
    return section


def probes(a: Analysis) -> Section:
    probe_set, model = a.probe_set, a.model
    # the network's own answer on the probe samples: the probes' reference, and the calibration section's input
    probe_coords, probe_confidence = analyses.decode(analyses.heatmaps(model, probe_set.images, a.batch_size))
    output_pck = pck(probe_coords, probe_set.keypoints, probe_set.visibility, a.normalizer).per_joint
    pixel = model_pixel_probes(model, probe_set.images, probe_set.keypoints, probe_set.visibility, seed=a.seed,
                               batch_size=a.batch_size)
    features = pooled_stages(model, probe_set.images, batch_size=a.batch_size)
    cka = cka_matrix(features)
    features[sections.OUTPUT_STAGE] = probe_coords.reshape(len(probe_coords), -1)  # the pooled probe's reference row
    pooled = linear_probes(features, probe_set.keypoints, probe_set.visibility, seed=a.seed)
    seconds = a.timer.elapsed()
    a.done.update(probe_coords=probe_coords, probe_confidence=probe_confidence, pixel=pixel, features=features)
    encoding = (None if i is None else pixel.stages[i] for i in sections.encoding_stage(pixel, output_pck))
    a.numbers["probes"] = {
        "stages": pixel.stages, "sides": pixel.sides, "samples": pixel.samples, "pixel_pck": pixel.pck,
        "pixel_visible_auroc": pixel.visible_auroc, "pixel_ceiling": pixel.ceiling, "chance_pck": pixel.chance,
        "output_pck": output_pck, "encoding_stage": dict(zip(KEYPOINT_NAMES, encoding)), "counted": pixel.counted,
        "cka": cka, "seconds": seconds,
        "pooled": {"stages": pooled.stages, "position_r2": pooled.position_r2, "visible_auroc": pooled.visible_auroc,
                   "labelled": pooled.labelled}}
    return sections.probes_section(pixel, output_pck, pooled, cka, seconds)


def facing(a: Analysis) -> Section:
    d = a.done
    section, a.numbers["facing"] = instruments.facing(d["features"], d["pixel"], a.probe_set, d["probe_coords"],
                                                      d["probe_confidence"], a.normalizer, a.seed, a.timer)
    return section


def over_training(a: Analysis) -> Section | None:
    if a.run is None:
        return None
    probe_set = a.probe_set
    trajectory = training_trajectory(a.run, probe_set.images, probe_set.keypoints, probe_set.visibility, a.every,
                                     device=a.device, batch_size=a.batch_size)
    analysed = analysed_epoch(a.run, a.checkpoint)
    a.numbers["over_training"] = asdict(trajectory) | {"analysed_epoch": analysed,
                                                       "outlying_end": trajectory.outlying_end()}
    return sections.trajectory_section(trajectory, a.run, a.every, a.timer.elapsed(), analysed=analysed)


def branches(a: Analysis) -> Section:
    contributions = analyses.branch_contributions(a.model, a.main.images, batch_size=a.batch_size)
    a.numbers["branches"] = {k: np.asarray(v).tolist() for k, v in asdict(contributions).items()} | {
        "skip_share": contributions.skip_share.tolist()}
    return sections.branch_section(contributions, a.done["study"], a.done["lesion_changes"], a.config)


def receptive_fields(a: Analysis) -> Section:
    erf_set = a.loaded.first(a.erf_samples)
    fields = effective_receptive_fields(a.model, erf_set.images, erf_set.keypoints, erf_set.visibility)
    a.numbers["receptive_fields"] = instrument_sections.erf_numbers(fields) | {"seconds": a.timer.elapsed()}
    return instrument_sections.erf_section(fields, len(erf_set), a.timer.elapsed())


def saliency(a: Analysis) -> Section:
    config, crops = a.config, a.crops
    gradients = analyses.saliency(a.model, crops, list(range(config.num_keypoints)),
                                  batch_size=max(1, a.batch_size // 2))
    input_coords = analyses.to_input_coords(a.done["pred_coords"], config.input_size, config.heatmap_size)
    radius = sections.SALIENCY_RADIUS * config.input_size
    shares = analyses.saliency_share(gradients, input_coords, radius)
    uniform = analyses.uniform_share(config.input_size, radius)
    a.done.update(gradients=gradients, input_coords=input_coords)
    a.numbers["saliency"] = {"radius_px": radius, "uniform_share": uniform, "samples": len(crops),
                             "mean_share": float(np.nanmean(shares)),
                             "mean_share_per_joint": np.nanmean(shares, axis=0).tolist()}
    return sections.saliency_section(crops, gradients, input_coords, shares, uniform)


def attributions(a: Analysis) -> Section:
    attributed = a.crops[:a.attribution_samples]
    gradients, input_coords = a.done["gradients"], a.done["input_coords"]
    a.numbers["attributions"] = sections.attribution_numbers(None)
    if not len(attributed):
        return sections.attribution_section(attributed, gradients, input_coords, None, 0.0)
    joints = list(range(a.config.num_keypoints))
    ig = attribution.integrated_gradients(a.model, attributed, joints, steps=a.ig_steps)
    check = attribution.randomisation_check(a.model, attributed, joints, ig, gradients[:len(attributed)],
                                            steps=a.ig_steps, seed=a.seed + 12345)
    labelled = a.main.visibility[a.shown[:len(attributed)]] > 0
    orders = (("Integrated Gradients", ig), ("input gradient", gradients[:len(attributed)]), ("random order", None))
    deletion = {label: attribution.deletion_curve(a.model, attributed, joints, maps, seed=a.seed)[labelled]
                for label, maps in orders}
    result = sections.AttributionResult(ig, check, deletion, labelled, a.ig_steps)
    a.numbers["attributions"] = sections.attribution_numbers(result)
    return sections.attribution_section(attributed, gradients, input_coords, result, a.timer.elapsed())


def occlusion(a: Analysis) -> Section:
    crops = a.crops[:a.occlusion_samples]
    occluded = [analyses.occlusion(a.model, crop, batch_size=a.batch_size) for crop in crops]
    return sections.occlusion_section(crops, occluded, a.config.input_size)


def dependency(a: Analysis) -> Section:
    chosen = a.loaded.first(a.dependency_samples)
    found = joint_dependency(a.model, chosen.images, chosen.keypoints, chosen.visibility, batch_size=a.batch_size)
    a.numbers["dependency"] = {k: v for k, v in asdict(found).items() if k != "per_sample_drop"} | {
        "samples": len(chosen), "surviving_pairs": found.surviving_pairs(5)}
    return sections.dependency_section(found, len(chosen), a.timer.elapsed())


def lesion_section(a: Analysis) -> Section:
    study, values, changes = a.done["study"], a.done["lesion_values"], a.done["lesion_changes"]
    a.numbers["lesions"] = {name: {"pck": v, "low": lo, "high": hi, "change_low": cl, "change_high": ch}
                            for name, v, lo, hi, cl, ch in zip(study.names, study.overall, values.low, values.high,
                                                               changes.low, changes.high)}
    return sections.lesion_section(study, len(a.main), values, changes, a.done["lesion_seconds"])


def calibration_step(a: Analysis) -> Section:
    probe_set, confidence = a.probe_set, a.done["probe_confidence"]
    counted = counted_mask(probe_set.visibility)
    correct = normalized_distances(a.done["probe_coords"], probe_set.keypoints, a.normalizer) < 0.5
    calibrated = calibration.calibrate(confidence, correct, counted)
    ece_interval = calibration.per_joint_ece_intervals(confidence, correct, counted, seed=a.seed)
    a.numbers["calibration"] = {
        "ece": calibrated.ece, "auroc": calibrated.auroc, "samples": len(probe_set), "accuracy": calibrated.accuracy,
        "mean_confidence": calibrated.mean_confidence,
        "per_joint_ece": dict(zip(KEYPOINT_NAMES, calibrated.per_joint_ece)),
        "per_joint_auroc": dict(zip(KEYPOINT_NAMES, calibrated.per_joint_auroc)),
        "per_joint_ece_interval": dict(zip(KEYPOINT_NAMES, zip(*ece_interval))),
        "reliability": asdict(calibrated.overall)}
    return sections.calibration_section(calibrated, len(probe_set), a.timer.elapsed(), ece_interval)


def failures(a: Analysis) -> Section:
    study, main = a.done["study"], a.main
    result = analyses.failures(study.coords[0], main.keypoints, main.visibility, a.normalizer, worst=8)
    joint_interval, overall_interval = calibration.pck_intervals(a.done["correct"][0], a.done["counted"],
                                                                 seed=a.seed)
    a.numbers["pck"] = {"overall": result.overall, "samples": len(main),
                        "interval": [overall_interval.low, overall_interval.high],
                        "per_joint": dict(zip(KEYPOINT_NAMES, result.per_joint.tolist())),
                        "per_joint_interval": dict(zip(KEYPOINT_NAMES, zip(joint_interval.low, joint_interval.high)))}
    return sections.failures_section(result, main, study.coords[0], a.config, len(main), joint_interval)


# (progress-bar name, step), in the page's order; a step may return no section (over training without a run)
STEPS = (
    ("lesions", lesions),
    ("heatmaps", heatmaps),
    ("stacks", stacks),
    ("activations", activations),
    ("dissection", dissection),
    ("probes", probes),
    ("facing", facing),
    ("over training", over_training),
    ("skip vs low branch", branches),
    ("receptive fields", receptive_fields),
    ("saliency", saliency),
    ("attributions", attributions),
    ("occlusion", occlusion),
    ("joint dependency", dependency),
    ("lesion study", lesion_section),
    ("calibration", calibration_step),
    ("failures", failures),
)


def run_steps(a: Analysis) -> list[Section]:
    page = []
    for name, step in STEPS:
        if name == "over training" and a.run is None:
            continue
        a.timer.start(name)
        section = step(a)
        if section is not None:
            page.append(section)
        a.timer.done()
    return page


def step_count(run) -> int:
    """Progress-bar steps of a report: every step (over training only with a run)."""
    return len(STEPS) - (run is None)

