"""`hgpose explore`: run every analysis of hgpose.explore on samples of a split and write one
self-contained static HTML page (OUT/index.html, figures embedded as PNG data URIs) plus the numbers
behind it (OUT/explore.json). With a run directory it adds how the analyses change over training; with a
second checkpoint (hgpose.explore.compare) it compares two models."""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from hgpose.explore import analyses as an
from hgpose.explore import attribution as at
from hgpose.explore import calibration as ca
from hgpose.explore import instrument_sections as ins
from hgpose.explore import report_instruments as instruments
from hgpose.explore import sections as sc
from hgpose.explore.dependency import joint_dependency
from hgpose.explore.html import esc, page, paragraph, table
from hgpose.explore.probes import cka_matrix, linear_probes, model_pixel_probes, pooled_stages
from hgpose.explore.receptive_field import effective_receptive_fields
from hgpose.explore.sections import SECTION_TITLES, fmt
from hgpose.keypoints import KEYPOINT_NAMES
from hgpose.model.hourglass import HourglassNet, count_parameters
from hgpose.model.weights import load_model
from hgpose.runtime.files import UserError, atomic_write_json, atomic_write_text

__all__ = ["SECTION_TITLES", "Samples", "load_samples", "write_explore_report", "MIN_RELIABLE_SAMPLES"]

MIN_RELIABLE_SAMPLES = 30  # fewer samples than this get a warning: intervals are wide, verdicts rare


@dataclass
class Samples:
    """Person crops of a split with their truth, the unreadable ones already dropped, in a seeded random
    order (so that the first n of them are a random n of the split)."""

    images: torch.Tensor  # (N, 3, S, S) uint8
    keypoints: np.ndarray  # (N, K, 2) heatmap coordinates
    visibility: np.ndarray  # (N, K) COCO flags, 0 off the heatmap
    ann_ids: np.ndarray  # (N,)
    split_size: int  # person instances in the whole split
    unreadable: int
    annotation_file: Path | None = None  # where the annotations came from (a generator's extra fields)

    def first(self, count: int) -> Samples:
        """The first `count` samples (all for 0)."""
        count = len(self.images) if count <= 0 else min(count, len(self.images))
        return Samples(self.images[:count], self.keypoints[:count], self.visibility[:count],
                       self.ann_ids[:count], self.split_size, self.unreadable, self.annotation_file)

    def __len__(self) -> int:
        return len(self.images)


def load_samples(data, split: str, input_size: int, samples: int, seed: int = 0, checkpoint=None,
                 batch_size: int = 32) -> Samples:
    """A seeded random `samples` instances of the split (all of them for 0), crops in memory."""
    from hgpose.data.dataset import PersonDataset
    from hgpose.data.image_report import image_report
    from hgpose.data.loader import make_loader
    from hgpose.evaluate import load_eval_index

    index = load_eval_index(data, split, Path(checkpoint) if checkpoint is not None else Path("."))
    total = len(index)
    if total == 0:
        raise UserError(f"{index.annotation_file}: split {split} holds no person instances")
    order = np.random.default_rng(seed).permutation(total)
    index = index.subset(order[:samples] if 0 < samples < total else order)
    dataset = PersonDataset(index, input_size=input_size)
    warned = image_report(dataset, progress=False).warning_line("explored")  # unreadable: counted below
    if warned:
        print(warned, file=sys.stderr)
    parts: dict[str, list] = {"image": [], "keypoints": [], "visibility": [], "valid": [], "index": []}
    for batch in make_loader(dataset, batch_size, shuffle=False):
        for key in parts:
            parts[key].append(batch[key])
    cat = {key: torch.cat(values) for key, values in parts.items()}
    valid = cat["valid"].bool()
    if not valid.any():
        raise UserError(f"{index.image_dir}: none of the {len(valid)} chosen samples' images could be read")
    return Samples(cat["image"][valid], cat["keypoints"][valid].numpy(), cat["visibility"][valid].numpy(),
                   index.ann_ids[cat["index"][valid].numpy()], total, int((~valid).sum()), index.annotation_file)


def _shown(samples: Samples, count: int) -> np.ndarray:
    """The samples drawn in the per-sample figures: the most labelled keypoints first (stable)."""
    labelled = (samples.visibility > 0).sum(axis=1)
    return np.argsort(-labelled, kind="stable")[:count]


def load_explore_model(checkpoint, device) -> HourglassNet:
    model = checkpoint.to(device).eval() if isinstance(checkpoint, HourglassNet) else load_model(checkpoint,
                                                                                                device=device)
    if model.config.num_keypoints != len(KEYPOINT_NAMES):
        raise UserError(f"explore needs a model of the {len(KEYPOINT_NAMES)} COCO keypoints, "
                        f"this one predicts {model.config.num_keypoints}")
    return model


def write_explore_report(checkpoint, data, split: str = "val2017", samples: int = 64, out="explore",
                         device="cpu", show: int = 4, occlusion_samples: int = 2, seed: int = 0,
                         batch_size: int = 16, progress: bool = True, probe_samples: int = 256,
                         dependency_samples: int = 16, attribution_samples: int = 2, ig_steps: int = 20,
                         run=None, every: int = 5, full_split: bool = True, dissection_samples: int = 64,
                         erf_samples: int = 8) -> Path:
    """Run the analyses and write OUT/index.html and OUT/explore.json; returns the HTML path.

    checkpoint: a path or an HourglassNet. samples: instances of the split that skip vs low, the lesion
    study and the failures use (0 = all); show: samples drawn in the per-sample figures, occlusion_samples
    and attribution_samples of them also get occlusion maps and checked attributions; probe_samples feed
    the probes, CKA, facing and calibration, dependency_samples the joint-dependency matrix, dissection_samples
    the network dissection, erf_samples the effective receptive fields. run: a training run
    directory, whose per-epoch checkpoints (every `every`-th) give the over-training section. full_split:
    also report the PCK of the whole split (from RUN/test_eval.json when it matches, else one pass).
    """
    from hgpose.runtime.progress import progress_bar

    started = time.perf_counter()
    device = torch.device(device)
    model = load_explore_model(checkpoint, device)
    out = Path(out)
    largest = 0 if 0 in (samples, probe_samples, dissection_samples) else max(
        samples, probe_samples, dependency_samples, dissection_samples, erf_samples)
    if run is not None:
        from hgpose.explore.trajectory import epoch_checkpoints

        epoch_checkpoints(run)  # a bad --run is one clean line, before any work
    # before the progress bar, so that a bad --data or --split is one clean line
    loaded = load_samples(data, split, model.config.input_size, largest, seed, _checkpoint_path(checkpoint))
    steps = len(SECTION_TITLES) + (1 if run is not None else 0)  # every section but over training, + writing
    bar = progress_bar(total=steps, desc="explore", unit="step", disable=not progress, dynamic_ncols=True)
    try:
        options = dict(samples=samples, show=show, occlusion_samples=occlusion_samples,
                       probe_samples=probe_samples, dependency_samples=dependency_samples,
                       attribution_samples=attribution_samples, ig_steps=ig_steps, run=run, every=every,
                       batch_size=batch_size, seed=seed, dissection_samples=dissection_samples,
                       erf_samples=erf_samples)
        sections, numbers = analyse(model, loaded, bar, device=device, checkpoint=_checkpoint_path(checkpoint),
                                    **options)
        full = _full_split_pck(checkpoint, data, split, loaded, numbers["pck"]["overall"], device, batch_size,
                               full_split)
        bar.set_description("explore: write")
        seconds = time.perf_counter() - started
        header = _header(checkpoint, data, split, loaded, model, numbers, full, seconds, options)
        html_path = atomic_write_text(out / "index.html", page("Inside the hourglass", header, sections))
        summary = {"checkpoint": str(_checkpoint_path(checkpoint)), "data": str(data), "split": split,
                   "samples": len(loaded.first(samples)), "loaded_samples": len(loaded),
                   "split_pck": full, "seconds": round(seconds, 1), **numbers}
        atomic_write_json(out / "explore.json", _jsonable(summary))
        bar.update()
        return html_path
    finally:
        bar.close()


def _checkpoint_path(checkpoint):
    """The checkpoint's path, or None for an in-memory model."""
    return None if isinstance(checkpoint, HourglassNet) else checkpoint


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


class _Timer:
    """Seconds and a progress-bar step per section."""

    def __init__(self, bar):
        self.bar, self.started = bar, time.perf_counter()

    def start(self, name: str):
        self.bar.set_description(f"explore: {name}")
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def done(self) -> float:
        self.bar.update()
        return time.perf_counter() - self.started


def analyse(model, loaded: Samples, bar, *, device, samples, show, occlusion_samples, probe_samples,
            dependency_samples, attribution_samples, ig_steps, run, every, batch_size, seed, dissection_samples=64,
            erf_samples=8, checkpoint=None) -> tuple[list, dict]:
    """Every section of the report, in order, and the numbers behind them."""
    from hgpose.evaluation.pck import counted_mask, normalized_distances, pck, seed_normalizer

    config = model.config
    normalizer = seed_normalizer(config.heatmap_size)
    main = loaded.first(samples)
    probe_set = loaded.first(probe_samples)
    n = len(main)
    shown = _shown(main, show)
    crops = main.images[shown]
    timer = _Timer(bar)
    sections, numbers = [], {}

    # computed first: the skip-vs-low section shows the lesion result next to the branch sizes
    timer.start("lesions")
    study = an.lesion_study(model, main.images, main.keypoints, main.visibility, normalizer, batch_size=batch_size)
    counted = counted_mask(main.visibility)
    correct = np.stack([normalized_distances(c, main.keypoints, normalizer) < 0.5 for c in study.coords])
    lesion_values, lesion_changes = ca.pooled_pck_intervals(correct, counted, seed=seed)
    lesion_seconds = timer.done()

    timer.start("heatmaps")
    predicted = an.heatmaps(model, crops, batch_size)
    pred_coords, confidence = an.decode(predicted)
    targets = an.target_heatmaps(main.keypoints[shown], main.visibility[shown], config.heatmap_size)
    twins = sc.twin_confusions(study.coords[0], main.keypoints, main.visibility, normalizer)
    sections.append(sc.heatmaps_section(crops, predicted, targets, pred_coords, confidence, main, shown, config,
                                        twins))
    numbers["twin_confusions"] = twins
    timer.done()

    timer.start("stacks")
    stacked = instruments.stacks(model, main, shown, batch_size, seed)
    sections.append(ins.stacks_section(stacked.study, crops[:2], stacked.maps, main.keypoints[shown[:2]],
                                       main.visibility[shown[:2]], config, timer.elapsed()))
    numbers["stacks"] = ins.stacks_numbers(stacked.study) | {"seconds": timer.elapsed()}
    timer.done()

    timer.start("activations")
    stages = an.activations(model, crops[:2], batch_size=batch_size)
    sections.append(sc.activations_section(crops[:2], stages))
    timer.done()

    timer.start("dissection")
    section, numbers["dissection"] = instruments.dissection(model, loaded.first(dissection_samples), batch_size,
                                                            seed, timer)
    sections.append(section)
    timer.done()

    timer.start("probes")
    # the network's own answer on the probe samples: the probes' reference, and the calibration section's input
    probe_coords, probe_confidence = an.decode(an.heatmaps(model, probe_set.images, batch_size))
    output_pck = pck(probe_coords, probe_set.keypoints, probe_set.visibility, normalizer).per_joint
    pixel = model_pixel_probes(model, probe_set.images, probe_set.keypoints, probe_set.visibility, seed=seed,
                               batch_size=batch_size)
    features = pooled_stages(model, probe_set.images, batch_size=batch_size)
    cka = cka_matrix(features)
    features[sc.OUTPUT_STAGE] = probe_coords.reshape(len(probe_coords), -1)  # the pooled probe's reference row
    pooled = linear_probes(features, probe_set.keypoints, probe_set.visibility, seed=seed)
    probe_seconds = time.perf_counter() - timer.started
    sections.append(sc.probes_section(pixel, output_pck, pooled, cka, probe_seconds))
    numbers["probes"] = {"stages": pixel.stages, "sides": pixel.sides, "samples": pixel.samples,
                         "pixel_pck": pixel.pck, "pixel_visible_auroc": pixel.visible_auroc,
                         "pixel_ceiling": pixel.ceiling, "chance_pck": pixel.chance, "output_pck": output_pck,
                         "encoding_stage": dict(zip(KEYPOINT_NAMES, (None if i is None else pixel.stages[i] for i in
                                                                    sc.encoding_stage(pixel, output_pck)))),
                         "counted": pixel.counted, "cka": cka, "seconds": probe_seconds,
                         "pooled": {"stages": pooled.stages, "position_r2": pooled.position_r2,
                                    "visible_auroc": pooled.visible_auroc, "labelled": pooled.labelled}}
    timer.done()

    timer.start("facing")
    section, numbers["facing"] = instruments.facing(features, pixel, probe_set, probe_coords, probe_confidence,
                                                    normalizer, seed, timer)
    sections.append(section)
    timer.done()

    if run is not None:
        from hgpose.explore.trajectory import training_trajectory

        timer.start("over training")
        trajectory = training_trajectory(run, probe_set.images, probe_set.keypoints, probe_set.visibility, every,
                                         device=device, batch_size=batch_size)
        from hgpose.explore.trajectory import analysed_epoch

        analysed = analysed_epoch(run, checkpoint)
        sections.append(sc.trajectory_section(trajectory, run, every, time.perf_counter() - timer.started,
                                              analysed=analysed))
        numbers["over_training"] = asdict(trajectory) | {"analysed_epoch": analysed,
                                                         "outlying_end": trajectory.outlying_end()}
        timer.done()

    timer.start("skip vs low branch")
    contributions = an.branch_contributions(model, main.images, batch_size=batch_size)
    sections.append(sc.branch_section(contributions, study, lesion_changes, config))
    numbers["branches"] = {k: np.asarray(v).tolist() for k, v in asdict(contributions).items()} | {
        "skip_share": contributions.skip_share.tolist()}
    timer.done()

    timer.start("receptive fields")
    erf_set = loaded.first(erf_samples)
    fields = effective_receptive_fields(model, erf_set.images, erf_set.keypoints, erf_set.visibility)
    sections.append(ins.erf_section(fields, len(erf_set), timer.elapsed()))
    numbers["receptive_fields"] = ins.erf_numbers(fields) | {"seconds": timer.elapsed()}
    timer.done()

    timer.start("saliency")
    gradients = an.saliency(model, crops, list(range(config.num_keypoints)), batch_size=max(1, batch_size // 2))
    input_coords = an.to_input_coords(pred_coords, config.input_size, config.heatmap_size)
    radius = sc.SALIENCY_RADIUS * config.input_size
    shares = an.saliency_share(gradients, input_coords, radius)
    uniform = an.uniform_share(config.input_size, radius)
    sections.append(sc.saliency_section(crops, gradients, input_coords, shares, uniform))
    numbers["saliency"] = {"radius_px": radius, "uniform_share": uniform, "samples": len(crops),
                           "mean_share": float(np.nanmean(shares)),
                           "mean_share_per_joint": np.nanmean(shares, axis=0).tolist()}
    timer.done()

    timer.start("attributions")
    attributed = crops[:attribution_samples]
    numbers["attributions"] = sc.attribution_numbers(None)
    if len(attributed):
        joints = list(range(config.num_keypoints))
        ig = at.integrated_gradients(model, attributed, joints, steps=ig_steps)
        check = at.randomisation_check(model, attributed, joints, ig, gradients[:len(attributed)], steps=ig_steps,
                                       seed=seed + 12345)
        labelled = main.visibility[shown[:len(attributed)]] > 0
        deletion = {label: at.deletion_curve(model, attributed, joints, maps, seed=seed)[labelled]
                    for label, maps in (("Integrated Gradients", ig), ("input gradient", gradients[:len(attributed)]),
                                        ("random order", None))}
        result = sc.AttributionResult(ig, check, deletion, labelled, ig_steps)
        sections.append(sc.attribution_section(attributed, gradients, input_coords, result,
                                               time.perf_counter() - timer.started))
        numbers["attributions"] = sc.attribution_numbers(result)
    else:
        sections.append(sc.attribution_section(attributed, gradients, input_coords, None, 0.0))
    timer.done()

    timer.start("occlusion")
    occluded = [an.occlusion(model, crop, batch_size=batch_size) for crop in crops[:occlusion_samples]]
    sections.append(sc.occlusion_section(crops[:occlusion_samples], occluded, config.input_size))
    timer.done()

    timer.start("joint dependency")
    dependency_set = loaded.first(dependency_samples)
    dependency = joint_dependency(model, dependency_set.images, dependency_set.keypoints, dependency_set.visibility,
                                  batch_size=batch_size)
    sections.append(sc.dependency_section(dependency, len(dependency_set), time.perf_counter() - timer.started))
    numbers["dependency"] = {k: v for k, v in asdict(dependency).items() if k != "per_sample_drop"} | {
        "samples": len(dependency_set), "surviving_pairs": dependency.surviving_pairs(5)}
    timer.done()

    sections.append(sc.lesion_section(study, n, lesion_values, lesion_changes, lesion_seconds))
    numbers["lesions"] = {name: {"pck": v, "low": lo, "high": hi, "change_low": cl, "change_high": ch}
                          for name, v, lo, hi, cl, ch in zip(study.names, study.overall, lesion_values.low,
                                                             lesion_values.high, lesion_changes.low,
                                                             lesion_changes.high)}

    timer.start("calibration")
    probe_counted = counted_mask(probe_set.visibility)
    probe_correct = normalized_distances(probe_coords, probe_set.keypoints, normalizer) < 0.5
    calibrated = ca.calibrate(probe_confidence, probe_correct, probe_counted)
    ece_interval = ca.per_joint_ece_intervals(probe_confidence, probe_correct, probe_counted, seed=seed)
    sections.append(sc.calibration_section(calibrated, len(probe_set), time.perf_counter() - timer.started,
                                           ece_interval))
    numbers["calibration"] = {"ece": calibrated.ece, "auroc": calibrated.auroc, "samples": len(probe_set),
                              "accuracy": calibrated.accuracy, "mean_confidence": calibrated.mean_confidence,
                              "per_joint_ece": dict(zip(KEYPOINT_NAMES, calibrated.per_joint_ece)),
                              "per_joint_auroc": dict(zip(KEYPOINT_NAMES, calibrated.per_joint_auroc)),
                              "per_joint_ece_interval": dict(zip(KEYPOINT_NAMES, zip(*ece_interval))),
                              "reliability": asdict(calibrated.overall)}
    timer.done()

    timer.start("failures")
    result = an.failures(study.coords[0], main.keypoints, main.visibility, normalizer, worst=8)
    joint_interval, overall_interval = ca.pck_intervals(correct[0], counted, seed=seed)
    sections.append(sc.failures_section(result, main, study.coords[0], config, n, joint_interval))
    numbers["pck"] = {"overall": result.overall, "samples": n,
                      "interval": [overall_interval.low, overall_interval.high],
                      "per_joint": dict(zip(KEYPOINT_NAMES, result.per_joint.tolist())),
                      "per_joint_interval": dict(zip(KEYPOINT_NAMES, zip(joint_interval.low, joint_interval.high)))}
    timer.done()
    return sections, numbers


def _full_split_pck(checkpoint, data, split, loaded: Samples, subset_pck, device, batch_size, enabled) -> dict:
    """{"pck", "source"} of the whole split: the subset's when it is the whole split, RUN/test_eval.json when
    it was computed for this checkpoint and split, else one evaluation pass (None when disabled or the model
    is in memory)."""
    if len(loaded) + loaded.unreadable >= loaded.split_size:
        return {"pck": subset_pck, "source": "these samples are the whole split"}
    path = _checkpoint_path(checkpoint)
    if path is None or not enabled:
        return {"pck": None, "source": "not computed"}
    import json

    from hgpose.evaluate import evaluate_checkpoint, headline_pck

    path = Path(path)
    for saved in (path.parent / "test_eval.json", path.parent.parent / "test_eval.json"):
        try:
            result = json.loads(saved.read_text())
        except (OSError, ValueError):
            continue
        same = (isinstance(result, dict) and result.get("split") == split and result.get("pck_style") == "seed"
                and Path(str(result.get("checkpoint"))).resolve() == path.resolve())
        if same and headline_pck(result) is not None:
            return {"pck": headline_pck(result), "source": f"{saved} ({result.get('precision', '?')})"}
    result = evaluate_checkpoint(path, data, split, batch_size=max(batch_size, 32), device=device,
                                 precision="fp32", progress=False)
    return {"pck": headline_pck(result), "source": f"one evaluation pass over the split (fp32, "
                                                   f"{result.get('instances', '?')} instances)"}


def _header(checkpoint, data, split, loaded: Samples, model, numbers, full, seconds, options) -> list[str]:
    n = numbers["pck"]["samples"]
    config = model.config
    source = "an in-memory model" if isinstance(checkpoint, HourglassNet) else str(checkpoint)
    low, high = numbers["pck"]["interval"]
    rows = [
        ("checkpoint", source),
        ("model", f"{config.num_stacks} hourglass(es) of depth {config.depth}, {config.features} features, "
                  f"{config.input_size}x{config.input_size} input, "
                  f"{config.heatmap_size}x{config.heatmap_size} heatmaps, "
                  f"{count_parameters(model):,} parameters"),
        ("data", f"{data}, split {split}: {n} of its {loaded.split_size} person instances for the main "
                 f"sections, {len(loaded)} for the probes and calibration"
                 + (f" ({loaded.unreadable} unreadable, skipped)" if loaded.unreadable else "")),
        ("PCK on these samples", f"{fmt(numbers['pck']['overall'])} (95% bootstrap interval {fmt(low)}-"
                                 f"{fmt(high)}, {n} samples; the seed's PCK: c = heatmap side / 10, r = 0.5)"),
        ("PCK on the whole split", f"{fmt(full['pck'])} ({full['source']})"),
        ("built in", f"{seconds:.0f} s"),
    ]
    body = [table(None, rows, "meta")]
    if n < MIN_RELIABLE_SAMPLES:
        warning = (f"Only {n} samples (--samples {options['samples']}): the intervals below are wide and most "
                   f"differences between joints or branches are within them; use --samples "
                   f"{4 * MIN_RELIABLE_SAMPLES} or more for conclusions.")
        print(f"warning: {warning}", file=sys.stderr)
        body.append(paragraph(warning, "warning"))
    again = (f"hgpose explore --checkpoint {source} --data {data} --split {split} --samples {options['samples']} "
             f"--out DIR")
    body.append(f'<p class="note">Rebuild with <code>{esc(again)}</code>. Images are person crops exactly as '
                "the network sees them (a square 1.25 times the person box). Every section states the samples "
                "it used and its cost; intervals are 95% percentile bootstraps over people.</p>")
    return body
