"""The report's glue for the third edition's instruments: run one analysis on the report's samples and
return its section and the numbers behind it (kept out of report.analyse, which is long enough)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hgpose.explore import instrument_sections as ins
from hgpose.explore.dissection import IOU_THRESHOLD, detectors, model_dissection, random_twin
from hgpose.explore.facing import (
    BACK,
    FRONT,
    UNDECIDED,
    facing_from_keypoints,
    facing_probes,
    known_facing,
    rate_by_confidence,
    readout_inversions,
    sample_inversions,
    wrong_side_share,
)
from hgpose.explore.stacks import stack_heatmaps, stack_study, stacks_pixel_probes
from hgpose.keypoints import twin_of


@dataclass
class Stacked:
    study: object  # stacks.StackStudy
    maps: np.ndarray  # (T, n, K, h, h) of the first two drawn samples
    pixel: object = None  # probes.PixelProbes over every stack's stages; None for a single hourglass


def stacks(model, main, shown, batch_size: int, seed: int, probe_set=None) -> Stacked:
    """Every stack scored on the main samples; with several stacks, the per-pixel probe over each stack's
    stages on the probe samples (the probes section's samples and folds)."""
    study = stack_study(model, main.images, main.keypoints, main.visibility, batch_size=batch_size, seed=seed)
    pixel = None
    if probe_set is not None and model.config.num_stacks > 1:
        pixel = stacks_pixel_probes(model, probe_set.images, probe_set.keypoints, probe_set.visibility, seed=seed,
                                    batch_size=batch_size)
    return Stacked(study, stack_heatmaps(model, main.images[shown[:2]], batch_size), pixel)


def dissection(model, samples, batch_size: int, seed: int, timer):
    """Dissect the model and a randomly initialised twin on `samples`; (section, numbers)."""
    trained = model_dissection(model, samples.images, samples.keypoints, samples.visibility,
                               batch_size=batch_size, seed=seed)
    random = model_dissection(random_twin(model, seed + 4321), samples.images, samples.keypoints,
                              samples.visibility, batch_size=batch_size, seed=seed, top=trained.top)
    found = detectors(trained, random, seed=seed)
    tiles = ins.dissection_tiles(model, samples.images, trained, found)
    section = ins.dissection_section(trained, random, found, tiles, timer.elapsed(), IOU_THRESHOLD)
    numbers = {"samples": trained.samples, "top": trained.top, "side": trained.side, "parts": list(trained.parts),
               "stages": ins.dissection_summary(trained, random, found),
               "best_iou": dict(zip(trained.stages, trained.best())),
               "random_best_iou": dict(zip(random.stages, random.best())),
               "shuffled_best_iou": dict(zip(trained.stages, trained.best(shuffled=True))),
               "seconds": timer.elapsed()}
    return section, numbers


def facing(features: dict, pixel, probe_set, probe_coords, probe_confidence, normalizer: float, seed: int, timer):
    """Facing from the probe samples' keypoints, probed on each stage's pooled features; (section, numbers)."""
    stages = {name: features[name] for name in pixel.stages if name in features}
    labels, _ = facing_from_keypoints(probe_set.keypoints, probe_set.visibility)
    probes = facing_probes(stages, labels, folds=pixel.folds, seed=seed)
    readout = readout_inversions(pixel, probe_set.keypoints, probe_set.visibility, normalizer)
    inverted, considered = sample_inversions(probe_coords, probe_set.keypoints, probe_set.visibility, normalizer)
    lateral = [j for j in range(probe_set.visibility.shape[1]) if twin_of(j) is not None]
    labelled = (probe_set.visibility == 1) | (probe_set.visibility == 2)
    weights = labelled[:, lateral]
    with np.errstate(invalid="ignore", divide="ignore"):
        head = (probe_confidence[:, lateral] * weights).sum(1) / weights.sum(1)
    head_bins = rate_by_confidence(head[considered], inverted[considered])
    best = int(np.nanargmax(probes.accuracy)) if np.isfinite(probes.accuracy).any() else 0
    margin = np.full(len(labels), np.nan)
    if len(probes.rows):
        margin[probes.rows] = np.abs(probes.scores[best])
    chosen = considered & np.isfinite(margin)
    probe_bins = rate_by_confidence(margin[chosen], inverted[chosen])
    network = wrong_side_share(probe_coords, probe_set.keypoints, probe_set.visibility, normalizer)
    known = None
    annotations = annotations_of(probe_set)
    if annotations is not None:
        truth = known_facing(annotations)
        if truth is not None:
            decided = labels != UNDECIDED
            known = (int((labels[decided] == truth[decided]).sum()), int(decided.sum()))
    section = ins.facing_section(labels, probes, readout, network, head_bins, probe_bins,
                                 probes.stages[best] if probes.stages else "-", known, timer.elapsed())
    numbers = {"samples": len(labels), "front": int((labels == FRONT).sum()), "back": int((labels == BACK).sum()),
               "stages": probes.stages, "accuracy": probes.accuracy, "low": probes.low, "high": probes.high,
               "majority": probes.majority, "readout_wrong_side_share": readout, "network_wrong_side_share": network,
               "by_head_confidence": _bins(head_bins), "by_probe_margin": _bins(probe_bins),
               "generator_agreement": known, "seconds": timer.elapsed()}
    return section, numbers


def _bins(bins) -> dict:
    return {"edges": bins.edges, "rate": bins.rate, "low": bins.low, "high": bins.high, "count": bins.count}


def annotations_of(samples) -> list[dict] | None:
    """The samples' COCO annotations (for a generator's recorded facing), or None when unreadable."""
    import json

    if getattr(samples, "annotation_file", None) is None:
        return None
    try:
        data = json.loads(open(samples.annotation_file, encoding="utf-8").read())
        by_id = {a.get("id"): a for a in data.get("annotations", []) if isinstance(a, dict)}
        return [by_id[int(i)] for i in samples.ann_ids]
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return None
