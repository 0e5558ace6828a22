"""`hgpose explore --checkpoint A --compare B`: the explore report's sections for two models on the same
samples, side by side, with B - A: accuracy (paired bootstrap intervals), what each stack fixes, heatmaps,
activations, the per-pixel probes and CKA, with --run the run's history with A and B placed on it, skip vs low
and lesions, how far each stage sees (effective receptive fields), saliency and
Integrated Gradients (with the rank correlation of A's and B's maps), joint dependency, calibration and the
worst samples of each. The figures are the single-model report's (hgpose.explore.sections, .figures)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hgpose.evaluation.pck import counted_mask, normalized_distances, pck, seed_normalizer
from hgpose.explore import analyses, attribution, calibration, figures, sections
from hgpose.explore import compare_instruments as instruments
from hgpose.explore.dependency import JointDependency, joint_dependency
from hgpose.explore.html import Section, esc, gallery, image, page, paragraph, table
from hgpose.explore.instrument_sections import ERF_TITLE, STACKS_TITLE
from hgpose.explore.probes import cka_matrix, model_pixel_probes, pooled_stages
from hgpose.explore.report import MIN_RELIABLE_SAMPLES, jsonable, load_explore_model, load_samples, shown_samples
from hgpose.explore.sections import fmt
from hgpose.explore.trajectory import epoch_checkpoints, training_trajectory
from hgpose.keypoints import KEYPOINT_NAMES
from hgpose.runtime.files import UserError, atomic_write_json, atomic_write_text
from hgpose.runtime.progress import progress_bar

COMPARE_TITLES = ("Accuracy", STACKS_TITLE, "Heatmaps", "Activations", "Where joint information lives",
                  "Over training", "Skip vs low branch and lesions", ERF_TITLE, "Saliency and Integrated Gradients",
                  "Joint dependency", "Calibration", "Where it fails")
ACTIVATION_SAMPLES = 2  # shown samples whose activations are drawn (every stage, both models)
WORST = 8  # worst samples shown per model


def _section(title: str, intro: str, body, cost: str) -> Section:
    assert title in COMPARE_TITLES, title
    return Section(title.lower().replace(",", "").replace(" ", "-"), title, intro, list(body), cost)


def _side(*items: tuple[str, str]) -> str:
    """Figures next to each other, each under a caption: items are (caption, html)."""
    return '<div class="side">' + "".join(f"<div><h3>{esc(c)}</h3>{h}</div>" for c, h in items) + "</div>"


@contextmanager
def _clock(seconds: dict, name: str):
    """Adds the block's wall time to seconds[name]: a section's cost is the sum over both models."""
    started = time.perf_counter()
    try:
        yield
    finally:
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - started


def _measure(model, main, probe_set, dependency_set, shown, options, seconds) -> dict:
    batch_size, seed = options["batch_size"], options["seed"]
    normalizer = seed_normalizer(model.config.heatmap_size)
    crops = main.images[shown]
    joints = list(range(model.config.num_keypoints))
    m: dict = {}
    with _clock(seconds, "accuracy"):
        study = analyses.lesion_study(model, main.images, main.keypoints, main.visibility, normalizer,
                                batch_size=batch_size)
        counted = counted_mask(main.visibility)
        correct = np.stack([normalized_distances(c, main.keypoints, normalizer) < 0.5 for c in study.coords])
        m["lesion_values"], m["lesion_changes"] = calibration.pooled_pck_intervals(correct, counted, seed=seed)
        m["joint_interval"], m["pooled_interval"] = calibration.pck_intervals(correct[0], counted, seed=seed)
        m.update(study=study, correct=correct[0], counted=counted)
    with _clock(seconds, "heatmaps"):
        m["predicted"] = analyses.heatmaps(model, crops, batch_size)
        m["coords"], m["confidence"] = analyses.decode(m["predicted"])
    with _clock(seconds, "activations"):
        m["stages"] = analyses.activations(model, crops[:ACTIVATION_SAMPLES], batch_size=batch_size)
        m["rms"] = analyses.stage_rms(model, main.images, batch_size=batch_size)
    with _clock(seconds, "probes"):
        probe_coords, probe_confidence = analyses.decode(analyses.heatmaps(model, probe_set.images, batch_size))
        m["output_pck"] = pck(probe_coords, probe_set.keypoints, probe_set.visibility, normalizer).per_joint
        m["pixel"] = model_pixel_probes(model, probe_set.images, probe_set.keypoints, probe_set.visibility,
                                        seed=seed, batch_size=batch_size)
        m["features"] = pooled_stages(model, probe_set.images, batch_size=batch_size)
    with _clock(seconds, "branches"):
        m["branches"] = analyses.branch_contributions(model, main.images, batch_size=batch_size)
    with _clock(seconds, "attributions"):
        m["gradients"] = analyses.saliency(model, crops, joints, batch_size=max(1, batch_size // 2))
        m["ig"] = attribution.integrated_gradients(model, crops[:options["attribution_samples"]], joints,
                                          steps=options["ig_steps"])
    with _clock(seconds, "dependency"):
        m["dependency"] = joint_dependency(model, dependency_set.images, dependency_set.keypoints,
                                           dependency_set.visibility, batch_size=batch_size)
    with _clock(seconds, "calibration"):
        probe_correct = normalized_distances(probe_coords, probe_set.keypoints, normalizer) < 0.5
        m["calibration"] = calibration.calibrate(probe_confidence, probe_correct, counted_mask(probe_set.visibility))
    with _clock(seconds, "failures"):
        m["failures"] = analyses.failures(study.coords[0], main.keypoints, main.visibility, normalizer, worst=WORST)
    return m


def checkpoint_epoch(checkpoint, run_dir) -> int | None:
    """The epoch of RUN's per-epoch checkpoint that holds the same weights as `checkpoint` (e.g. the run's
    best.safetensors, a copy of one of them), or None: another run's model, or one in memory."""
    from safetensors.torch import load_file

    if isinstance(checkpoint, torch.nn.Module):
        return None
    available = epoch_checkpoints(run_dir)
    for epoch, path in available.items():
        if Path(path).resolve() == Path(checkpoint).resolve():
            return epoch
    wanted = load_file(str(checkpoint))
    for epoch, path in available.items():
        other = load_file(str(path))
        if other.keys() == wanted.keys() and all(torch.equal(other[k], wanted[k]) for k in wanted):
            return epoch
    return None


def write_compare_report(checkpoint_a, checkpoint_b, data, split: str = "val2017", samples: int = 64,
                         out="explore-compare", device="cpu", seed: int = 0, batch_size: int = 16,
                         probe_samples: int = 256, dependency_samples: int = 16, progress: bool = True,
                         show: int = 4, attribution_samples: int = 2, ig_steps: int = 20, run=None,
                         every: int = 5, erf_samples: int = 8) -> Path:
    """Write OUT/index.html and OUT/explore.json comparing model B with model A on the same samples.
    run: a training run directory; its history (the over-training section) is shown once, with A and B
    marked at their epochs when they are among its per-epoch checkpoints."""
    started = time.perf_counter()
    device = torch.device(device)
    model_a, model_b = _load_pair(checkpoint_a, checkpoint_b, device)
    marks = {}
    if run is not None:  # a bad --run is one clean line, before any work
        marks = {label: epoch for label, checkpoint in (("A", checkpoint_a), ("B", checkpoint_b))
                 if (epoch := checkpoint_epoch(checkpoint, run)) is not None}
    largest = 0 if 0 in (samples, probe_samples) else max(samples, probe_samples, dependency_samples, erf_samples)
    path_a = None if isinstance(checkpoint_a, torch.nn.Module) else checkpoint_a
    loaded = load_samples(data, split, model_a.config.input_size, largest, seed, path_a)
    sets = SampleSets(loaded.first(samples), loaded.first(probe_samples), loaded.first(dependency_samples),
                      loaded.first(erf_samples))
    shown = shown_samples(sets.main, show)
    options = dict(batch_size=batch_size, seed=seed, attribution_samples=min(attribution_samples, len(shown)),
                   ig_steps=ig_steps)
    seconds: dict[str, float] = {}
    measured = {}
    for name, model in progress_bar((("A", model_a), ("B", model_b)), desc="explore compare", disable=not progress):
        measured[name] = _measure(model, sets.main, sets.probe, sets.dependency, shown, options, seconds)
        with _clock(seconds, "stacks"):
            measured[name]["stacks"] = instruments.measure_stacks(model, sets.main, batch_size, seed)
        with _clock(seconds, "receptive fields"):
            measured[name]["fields"] = instruments.measure_fields(model, sets.erf)
    a, b = measured["A"], measured["B"]
    difference, pooled_difference = calibration.paired_difference_intervals(a["correct"], b["correct"],
                                                                            a["counted"], seed=seed)
    cross = cka_matrix(a["features"], b["features"])
    correlations = _map_correlations(a, b, sets.main.visibility[shown] > 0)
    trajectory = None
    if run is not None:
        with _clock(seconds, "over training"):
            trajectory = training_trajectory(run, sets.probe.images, sets.probe.keypoints, sets.probe.visibility,
                                             every, device=device, batch_size=batch_size)
    page_sections = [
        _accuracy_section(a, b, difference, pooled_difference, len(sets.main), seconds["accuracy"]),
        instruments.stacks_compare_section({k: m["stacks"] for k, m in measured.items()}, seconds["stacks"]),
        _heatmaps_section(a, b, sets.main, shown, model_a.config, seconds["heatmaps"]),
        _activations_section(a, b, sets.main.images[shown[:ACTIVATION_SAMPLES]], cross, len(sets.main),
                             seconds["activations"]),
        _probes_section(a, b, cross, len(sets.probe), seconds["probes"]),
    ]
    if trajectory is not None:
        page_sections.append(sections.trajectory_section(trajectory, run, every, seconds["over training"], marks,
                                                         _run_sentence(run, marks)))
    page_sections += [
        _branches_section(a, b, len(sets.main), seconds["accuracy"] + seconds["branches"]),
        instruments.erf_compare_section({k: m["fields"] for k, m in measured.items()}, len(sets.erf),
                                        seconds["receptive fields"]),
        _attributions_section(a, b, sets.main, shown, model_a.config, correlations, options, seconds["attributions"]),
        _dependency_section(a, b, len(sets.dependency), seconds["dependency"]),
        _calibration_section(a, b, len(sets.probe), seconds["calibration"]),
        _failures_section(a, b, sets.main, model_a.config, seconds["failures"]),
    ]
    total = time.perf_counter() - started
    names = {"A": "an in-memory model" if path_a is None else str(checkpoint_a),
             "B": str(checkpoint_b) if not isinstance(checkpoint_b, torch.nn.Module) else "an in-memory model"}
    header = _compare_header(names, data, split, loaded, sets, shown, a, b, pooled_difference, run, marks, total)
    html_path = atomic_write_text(Path(out) / "index.html", page("Two hourglasses compared", header, page_sections))
    summary = {"a": names["A"], "b": names["B"], "data": str(data), "split": split, "samples": len(sets.main),
               "seconds": round(total, 1), "section_seconds": seconds,
               **_compare_numbers(measured, difference, pooled_difference, cross, correlations, shown, options),
               **instruments.instrument_numbers(measured)}
    if trajectory is not None:
        summary["over_training"] = {"run": str(run), "epochs": trajectory.epochs, "marks": marks}
    atomic_write_json(Path(out) / "explore.json", jsonable(summary))
    return html_path


@dataclass
class SampleSets:
    main: object  # accuracy, lesions, the worst samples
    probe: object  # probes and calibration
    dependency: object  # the dependency matrix
    erf: object  # the effective receptive fields


def _load_pair(checkpoint_a, checkpoint_b, device):
    model_a, model_b = load_explore_model(checkpoint_a, device), load_explore_model(checkpoint_b, device)
    if model_a.config.input_size != model_b.config.input_size:
        raise UserError(f"{checkpoint_b}: input size {model_b.config.input_size} differs from {checkpoint_a}'s "
                        f"{model_a.config.input_size}; the two models must see the same crops")
    return model_a, model_b


def _compare_header(names, data, split, loaded, sets, shown, a, b, pooled_difference, run, marks, total) -> list:
    """The page's table of what was compared, on which samples, and the headline PCKs."""
    main = sets.main
    rows = [("A", names["A"]), ("B", names["B"]),
            ("data", f"{data}, split {split}: {len(main)} of its {loaded.split_size} person instances for "
                     f"accuracy, lesions and the worst samples, {len(shown)} of them drawn, {len(sets.probe)} for "
                     f"probes and calibration, {len(sets.dependency)} for the dependency matrix"),
            ("PCK", f"A {fmt(a['pooled_interval'].value)} ({fmt(a['pooled_interval'].low)}-"
                    f"{fmt(a['pooled_interval'].high)}), B {fmt(b['pooled_interval'].value)} "
                    f"({fmt(b['pooled_interval'].low)}-{fmt(b['pooled_interval'].high)}), B - A "
                    f"{float(pooled_difference.value):+.3f} ({float(pooled_difference.low):+.3f} to "
                    f"{float(pooled_difference.high):+.3f}, paired), {len(main)} samples")]
    if run is not None:
        rows.append(("run", f"{run}: " + _run_sentence(run, marks)))
    rows.append(("built in", f"{total:.0f} s"))
    header = [table(None, rows, "meta")]
    if len(main) < MIN_RELIABLE_SAMPLES:
        header.append(paragraph(f"Only {len(main)} samples: most differences will be within their intervals.",
                                "warning"))
    return header


def _compare_numbers(measured, difference, pooled_difference, cross, correlations, shown, options) -> dict:
    """explore.json's comparison: PCK, probes, attributions, worst samples, dependency, calibration."""
    a, b = measured["A"], measured["B"]
    return {"pck": {"a": a["pooled_interval"].value, "b": b["pooled_interval"].value,
                    "b_minus_a": pooled_difference.value,
                    "b_minus_a_interval": [pooled_difference.low, pooled_difference.high],
                    "per_joint_b_minus_a": dict(zip(KEYPOINT_NAMES, difference.value))},
            "probes": {"stages": a["pixel"].stages, "pixel_pck": {"a": a["pixel"].pck, "b": b["pixel"].pck},
                       "output_pck": {"a": a["output_pck"], "b": b["output_pck"]},
                       "chance_pck": a["pixel"].chance, "cka_a_vs_b": np.diag(cross)},
            "attributions": {"samples": {"gradient": len(shown), "ig": options["attribution_samples"]},
                             "rank_correlation_a_vs_b": {
                                 k: dict(zip(KEYPOINT_NAMES, v)) for k, v in _joint_means(correlations).items()}},
            "worst": {"a": a["failures"].worst, "b": b["failures"].worst},
            "dependency_drop": {"a": a["dependency"].confidence_drop, "b": b["dependency"].confidence_drop},
            "calibration": {k: {"ece": m["calibration"].ece, "auroc": m["calibration"].auroc}
                            for k, m in measured.items()}}


def _run_sentence(run, marks: dict) -> str:
    """What the run's history has to do with the two compared models, in one sentence."""
    placed = " and ".join(f"{label} at epoch {epoch}" for label, epoch in marks.items())
    missing = [label for label in ("A", "B") if label not in marks]
    if not marks:
        return (f"Over training is the history of one run, not a difference between two models: neither A nor B "
                f"holds the weights of one of {run}'s epoch checkpoints, so this history places neither of them.")
    return ("Over training is the history of one run, not a difference between two models: this is "
            f"{run}'s, with {placed} marked on it"
            + (f" ({' and '.join(missing)} is not one of its epoch checkpoints)." if missing else "."))


def _cost(samples: str, seconds: float) -> str:
    return f"{samples}; {seconds:.1f} s for both models."


def _accuracy_section(a, b, difference, pooled, n: int, seconds: float) -> Section:
    rows = [(name, fmt(pa), fmt(pb), f"{d:+.3f}" if np.isfinite(d) else "-",
             f"{lo:+.3f} to {hi:+.3f}" if np.isfinite(lo) else "-")
            for name, pa, pb, d, lo, hi in zip(KEYPOINT_NAMES, a["joint_interval"].value, b["joint_interval"].value,
                                               difference.value, difference.low, difference.high)]
    clear = [KEYPOINT_NAMES[j] for j in range(len(KEYPOINT_NAMES))
             if np.isfinite(difference.low[j]) and (difference.low[j] > 0 or difference.high[j] < 0)]
    return _section("Accuracy", (
        "Per-joint PCK of both models on the same samples (error bars: 95% bootstrap intervals over people), and "
        "the difference B - A with a paired bootstrap interval (the same people resampled for both models, so "
        "the interval reflects the difference, not the spread between people). A difference whose interval "
        "excludes 0 is one these samples can tell apart."), [
        _side(("A", image(figures.per_joint_figure(a["joint_interval"].value, a["counted"].sum(0), a["joint_interval"]),
                          "per-joint PCK of A")),
              ("B", image(figures.per_joint_figure(b["joint_interval"].value, b["counted"].sum(0), b["joint_interval"]),
                          "per-joint PCK of B"))),
        table(("joint", "PCK A", "PCK B", "B - A", "95% paired interval"), rows),
        paragraph(f"Pooled: B - A = {float(pooled.value):+.3f} ({float(pooled.low):+.3f} to "
                  f"{float(pooled.high):+.3f}). "
                  + (f"Joints whose difference excludes 0: {', '.join(clear)}." if clear else
                     "No joint's difference excludes 0 on these samples."), "note"),
    ], _cost(f"{n} samples, the intact model and its lesions in one pass", seconds))


def _heatmaps_section(a, b, main, shown, config, seconds: float) -> Section:
    body = []
    names = figures.SHORT_NAMES
    for i, position in enumerate(shown):
        crop = main.images[position].numpy()
        truth = analyses.to_input_coords(main.keypoints[position], config.input_size, config.heatmap_size)
        coords = {k: analyses.to_input_coords(m["coords"][i], config.input_size, config.heatmap_size)
                  for k, m in (("A", a), ("B", b))}
        rows = [figures.MapRow(figures.pose_on_crop(crop, coords[k], m["confidence"][i]), k, m["predicted"][i],
                          [f"{n} {k} {c:.2f}" for n, c in zip(names, m["confidence"][i])], coords[k])
                for k, m in (("A", a), ("B", b))]
        rows.append(figures.MapRow(figures.truth_picture(crop, truth, main.visibility[position]), "B - A, true",
                              b["predicted"][i] - a["predicted"][i],
                              [f"{n} B-A {c:+.2f}" for n, c in zip(names, b["confidence"][i] - a["confidence"][i])],
                              figures.truth_rings(truth, main.visibility[position]), ring=True, signed=True))
        body += [f"<h3>sample {i + 1} (annotation {int(main.ann_ids[position])})</h3>",
                 image(figures.joint_rows_figure(crop, rows), f"heatmaps of A and B, sample {i + 1}")]
    labelled = main.visibility[shown] > 0
    apart = np.linalg.norm(a["coords"] - b["coords"], axis=-1) / seed_normalizer(config.heatmap_size) >= 0.5
    higher = (b["confidence"] > a["confidence"])[labelled]
    body.append(paragraph(
        f"Over the {int(labelled.sum())} labelled keypoints of these {len(shown)} samples: mean confidence A "
        f"{fmt(a['confidence'][labelled].mean())}, B {fmt(b['confidence'][labelled].mean())}; B's peak is the "
        f"higher for {int(higher.sum())} of them; A and B decode {int(apart[labelled].sum())} of them outside the "
        "PCK radius of each other.", "note"))
    return _section("Heatmaps", (
        "The predicted heatmaps of both models for the same crops, in two blocks of joints: row A and row B as in "
        "the single-model report (cyan cross: the decoded keypoint, its confidence after the joint's name; the "
        "first column draws that model's skeleton), and B - A (red: B puts more heat there, blue: less; the first "
        "column and the rings: the labelled truth). All maps share one scale, 0 to 1 and -1 to 1 for the "
        "difference, so heights compare across rows, joints and samples."), body,
        _cost(f"{len(shown)} samples drawn", seconds))


def _activations_section(a, b, crops, cross, n: int, seconds: float) -> Section:
    body = []
    for i in range(len(crops)):
        tiles = [(k, image(figures.activation_figure(crops[i].numpy(), {s: maps[i] for s, maps in m["stages"].items()},
                                                    top=3), f"activations of {k}, sample {i + 1}"))
                 for k, m in (("A", a), ("B", b))]
        body += [f"<h3>sample {i + 1}</h3>", _side(*tiles)]
    stages = list(a["rms"])
    same = dict(zip(a["pixel"].stages, np.diag(cross)))
    rows = [(s, fmt(a["rms"][s]), fmt(b["rms"][s]), fmt(b["rms"][s] / a["rms"][s], 2) if a["rms"][s] > 0 else "-",
             fmt(same.get(s, float("nan")), 2)) for s in stages]
    least = min(same, key=lambda s: same[s] if np.isfinite(same[s]) else np.inf)
    body += [table(("stage", "RMS A", "RMS B", "B / A", "CKA A vs B"), rows),
             paragraph(f"The two models represent these samples least alike at {least} (CKA {fmt(same[least], 2)})"
                       f" and most alike at {max(same, key=lambda s: np.nan_to_num(same[s], nan=-1))} "
                       f"(CKA {fmt(max(np.nan_to_num(list(same.values()), nan=-1)), 2)}).", "note")]
    return _section("Activations", (
        "The feature maps of every stage for the same crops, A beside B: the channel mean, then the three channels "
        "with the largest mean activation, each tile on its own scale. Two models' channels need not correspond "
        "(training moves them even from the same initialisation), so compare the channel means' shapes, and read the "
        "table: each stage's activation size (RMS over channels and pixels, averaged over samples) and the linear "
        "CKA between A's and B's representations of that stage on the probe samples (1: the same up to rotation "
        "and scale)."), body,
        _cost(f"{len(crops)} samples drawn, RMS over {n} samples, CKA over the probe samples", seconds))


def _probes_section(a, b, cross, n: int, seconds: float) -> Section:
    stages = a["pixel"].stages
    diff = b["pixel"].pck - a["pixel"].pck
    limit = max(float(np.nanmax(np.abs(diff))) if np.isfinite(diff).any() else 0.0, 1e-3)

    def pck_matrix(m, who):
        matrix, rows = sections.pixel_matrix(m["pixel"], m["output_pck"])
        return image(figures.matrix_figure(matrix, rows, figures.SHORT_NAMES,
                                           f"{who}: per-pixel read-out, held-out PCK",
                                      vmin=0, vmax=1, label="PCK"), f"per-pixel probe PCK of {who}")

    first = {k: sections.encoding_stage(m["pixel"], m["output_pck"]) for k, m in (("A", a), ("B", b))}
    rows = [(name, *(fmt(m["output_pck"][j], 2) for m in (a, b)),
             *("-" if first[k][j] is None else stages[first[k][j]] for k in ("A", "B")))
            for j, name in enumerate(KEYPOINT_NAMES)]
    mean_a, mean_b = (np.nanmean(m["pixel"].pck, axis=1) for m in (a, b))
    return _section("Where joint information lives", (
        "The per-pixel probe of the single-model report for both models (held-out PCK of a linear read-out of each "
        "joint's heatmap from each stage; each row names the stage's side and, in brackets, the PCK its true "
        "targets reach at that side; the last rows are the network's own PCK and chance), their difference, and "
        "for each joint the first stage whose read-out closes "
        f"{sections.PROBE_SHARE:.0%} of the gap from chance to that model's own PCK. Then linear CKA between every "
        "stage of A and every stage of B: a high diagonal means the two models represent these samples alike stage by "
        "stage."), [
        _side(("A", pck_matrix(a, "A")), ("B", pck_matrix(b, "B"))),
        image(figures.matrix_figure(diff, sections.stage_labels(a["pixel"]), figures.SHORT_NAMES,
                                    "B - A: per-pixel read-out PCK",
                               cmap="RdBu_r", vmin=-limit, vmax=limit, label="PCK difference"),
              "per-pixel probe difference"),
        paragraph("Mean PCK over joints, A / B: " + ", ".join(
            f"{s} {fmt(x, 2)} / {fmt(y, 2)}" for s, x, y in zip(stages, mean_a, mean_b)) + ".", "note"),
        table(("joint", "network A", "network B", "first stage, A", "first stage, B"), rows),
        image(figures.matrix_figure(cross, [f"A {s}" for s in stages], [f"B {s}" for s in stages],
                               "linear CKA, stage of A (row) vs stage of B (column)", vmin=0, vmax=1, label="CKA",
                               cell=0.6), "CKA between the models' stages"),
        paragraph("Same stage in both models, CKA: " + ", ".join(
            f"{s} {fmt(cross[i, i], 2)}" for i, s in enumerate(stages)) + ".", "note"),
    ], _cost(f"{n} samples, {len(stages)} stages x 17 joints per model", seconds))


def _branches_section(a, b, n: int, seconds: float) -> Section:
    rows = []
    for name, va, vb, ca_lo, ca_hi, cb_lo, cb_hi in zip(a["study"].names, a["study"].overall, b["study"].overall,
                                                        a["lesion_changes"].low, a["lesion_changes"].high,
                                                        b["lesion_changes"].low, b["lesion_changes"].high):
        change_a = va - a["study"].overall[0]
        change_b = vb - b["study"].overall[0]
        rows.append((name, fmt(va), fmt(vb), f"{change_a:+.3f} [{ca_lo:+.3f}, {ca_hi:+.3f}]",
                     f"{change_b:+.3f} [{cb_lo:+.3f}, {cb_hi:+.3f}]"))
    shares = [(f"level {i + 1}", f"{100 * sa:.0f}%", f"{100 * sb:.0f}%", f"{100 * (sb - sa):+.0f} points")
              for i, (sa, sb) in enumerate(zip(a["branches"].skip_share, b["branches"].skip_share))]
    return _section("Skip vs low branch and lesions", (
        "The skip share of each level's output RMS (which grows towards the low branch at outer levels by "
        "construction, so compare the two models rather than the levels) and the lesion study: PCK with each "
        "branch zeroed and its change against the intact model, with 95% paired bootstrap intervals."), [
        _side(*((k, image(figures.branch_figure(m["branches"]), f"branch sizes of {k}")) for k, m in (("A", a), ("B",
                                                                                                                 b)))),
        table(("level", "skip share A", "skip share B", "B - A"), shares),
        _side(*((k, image(figures.lesion_figure(m["study"], m["lesion_values"]), f"lesions of {k}"))
                for k, m in (("A", a), ("B", b)))),
        table(("condition", "PCK A", "PCK B", "change A [95%]", "change B [95%]"), rows),
    ], _cost(f"{n} samples", seconds))


def _map_correlations(a, b, labelled) -> dict[str, np.ndarray]:
    """Rank correlation of A's and B's map of each joint on each crop, NaN where the joint is unlabelled:
    {"input gradient": (N, K), "Integrated Gradients": (M, K)} (IG on the first M crops only)."""
    gradient = np.where(labelled, attribution.map_correlations(a["gradients"], b["gradients"]), np.nan)
    ig = np.where(labelled[: len(a["ig"])], attribution.map_correlations(a["ig"], b["ig"]),
                  np.nan) if len(a["ig"]) else \
        np.full((0, labelled.shape[1]), np.nan)
    return {"input gradient": gradient, "Integrated Gradients": ig}


def _joint_means(correlations: dict) -> dict[str, np.ndarray]:
    """Per joint, the mean over the crops where it is labelled (NaN: none)."""
    means = {}
    for key, values in correlations.items():
        with np.errstate(invalid="ignore"):
            counts = np.isfinite(values).sum(axis=0)
            means[key] = np.where(counts > 0, np.nansum(values, axis=0) / np.maximum(counts, 1), np.nan)
    return means


def _attributions_section(a, b, main, shown, config, correlations, options, seconds: float) -> Section:
    crops = main.images[shown]
    labelled = main.visibility[shown] > 0
    radius = sections.SALIENCY_RADIUS * config.input_size
    coords = {k: analyses.to_input_coords(m["coords"], config.input_size, config.heatmap_size)
              for k, m in (("A", a), ("B", b))}
    near = {k: analyses.saliency_share(m["gradients"], coords[k], radius) for k, m in (("A", a), ("B", b))}
    gradient_rho, ig_rho = correlations["input gradient"], correlations["Integrated Gradients"]
    body = []
    for i in range(len(a["ig"])):
        joints = sections.attributed_joints(labelled[i])
        columns = [("input gradient, A", a["gradients"][i, joints], None),
                   ("input gradient, B", b["gradients"][i, joints], gradient_rho[i, joints]),
                   ("IG, A", a["ig"][i, joints], None), ("IG, B", b["ig"][i, joints], ig_rho[i, joints])]
        body += [f"<h3>sample {i + 1}</h3>",
                 image(figures.map_columns_figure(crops[i].numpy(), joints, columns, coords["A"][i]),
                       f"attributions of A and B, sample {i + 1}")]
    means = _joint_means(correlations)
    shares = {k: np.array([np.nanmean(v[labelled[:, j], j]) if labelled[:, j].any() else np.nan
                           for j in range(labelled.shape[1])]) for k, v in near.items()}
    rows = [(name, fmt(means["input gradient"][j], 2), fmt(means["Integrated Gradients"][j], 2),
             f"{fmt(100 * shares['A'][j], 0)}%", f"{fmt(100 * shares['B'][j], 0)}%")
            for j, name in enumerate(KEYPOINT_NAMES)]
    uniform = analyses.uniform_share(config.input_size, radius)
    body += [
        table(("joint", "\u03c1 A vs B, input gradient", "\u03c1 A vs B, IG", "saliency near the joint, A",
               "saliency near the joint, B"), rows),
        paragraph(
            f"Over the labelled sample-joint pairs, A's and B's maps have a mean rank correlation of "
            f"{fmt(np.nanmean(gradient_rho), 2)} for the input gradient ({int(np.isfinite(gradient_rho).sum())} "
            f"pairs) and {fmt(np.nanmean(ig_rho) if np.isfinite(ig_rho).any() else np.nan, 2)} for Integrated "
            f"Gradients ({int(np.isfinite(ig_rho).sum())} pairs). Share of the saliency near the predicted joint: "
            f"A {fmt(100 * np.nanmean(near['A'][labelled]), 0)}%, B {fmt(100 * np.nanmean(near['B'][labelled]), 0)}%"
            f" (a uniform map: {100 * uniform:.0f}%).", "note"),
    ]
    return _section("Saliency and Integrated Gradients", (
        "The input gradient (the Saliency section's map) and Integrated Gradients (Captum, from a uniform grey "
        f"image, {options['ig_steps']} steps) of each joint's confidence for both models on the same crops, each "
        "map scaled to its own 99th percentile; the cross is A's predicted joint. \u03c1 is the Spearman rank "
        "correlation between A's and B's map of the same joint on the same crop: 1, both models rest the joint on "
        "the same pixels in the same order; near 0, on unrelated ones (the single-model report's randomisation "
        "check gives the scale: a model with re-initialised weights). The table averages \u03c1 over the "
        f"samples where the joint is labelled, and gives the share of each model's saliency within "
        f"{sections.SALIENCY_RADIUS:.0%} of the crop side of its own predicted joint."), body,
        _cost(f"{len(shown)} samples x 17 joints for the input gradients, {len(a['ig'])} of them for Integrated "
              f"Gradients ({options['ig_steps']} steps)", seconds))


def _dependency_section(a, b, n: int, seconds: float) -> Section:
    names = list(figures.SHORT_NAMES)
    da, db = a["dependency"].confidence_drop, b["dependency"].confidence_drop
    limit = max(float(np.nanmax(np.abs(np.stack([da, db])))), 1e-6)
    diff = db - da
    dlimit = max(float(np.nanmax(np.abs(diff))), 1e-6)

    def matrix(m, title):
        return image(figures.matrix_figure(m, names, names, title, cmap="RdBu_r", vmin=-limit, vmax=limit,
                                      label="confidence drop", cell=0.45), title)

    pairs = [(KEYPOINT_NAMES[i], KEYPOINT_NAMES[j], v) for i, j, v in
             JointDependency(diff, diff, a["dependency"].masked, 0.0).strongest_pairs(3)]
    return _section("Joint dependency", (
        "Confidence drop of joint i (row) when joint j (column) is hidden, for both models on one colour scale, "
        "and B - A (red: B depends more on that joint than A)."), [
        _side(("A", matrix(da, "A: confidence drop")), ("B", matrix(db, "B: confidence drop"))),
        image(figures.matrix_figure(diff, names, names, "B - A", cmap="RdBu_r", vmin=-dlimit, vmax=dlimit,
                               label="difference", cell=0.5), "dependency difference"),
        paragraph("Largest increases from A to B: " + "; ".join(
            f"{i} when {j} is hidden ({v:+.3f})" for i, j, v in pairs) + ".", "note"),
    ], _cost(f"{n} samples, {int(a['dependency'].masked.sum())} masked keypoints per model", seconds))


def _calibration_section(a, b, n: int, seconds: float) -> Section:
    rows = [("all", fmt(a["calibration"].ece), fmt(b["calibration"].ece), fmt(a["calibration"].auroc),
             fmt(b["calibration"].auroc))]
    rows += [(name, fmt(ea), fmt(eb), fmt(ua), fmt(ub)) for name, ea, eb, ua, ub in
             zip(KEYPOINT_NAMES, a["calibration"].per_joint_ece, b["calibration"].per_joint_ece,
                 a["calibration"].per_joint_auroc, b["calibration"].per_joint_auroc)]
    return _section("Calibration", (
        "Reliability diagrams of the heatmap peak as a confidence for both models (bars on the diagonal: "
        "calibrated), expected calibration error (0: calibrated) and AUROC of correct against wrong keypoints "
        "(0.5: chance)."), [
        _side(("A", image(figures.reliability_figure(a["calibration"]), "reliability of A")),
              ("B", image(figures.reliability_figure(b["calibration"]), "reliability of B"))),
        table(("joint", "ECE A", "ECE B", "AUROC A", "AUROC B"), rows),
    ], _cost(f"{n} samples (their heatmaps come with the probes)", seconds))


def _failures_section(a, b, main, config, seconds: float) -> Section:
    scale = config.input_size / config.heatmap_size

    def caption(p):
        return (f"annotation {int(main.ann_ids[p])}: mean error A {a['failures'].errors[p] * scale:.1f}, "
                f"B {b['failures'].errors[p] * scale:.1f} input px")

    worst = {k: m["failures"].worst for k, m in (("A", a), ("B", b))}
    shared = sorted(set(worst["A"].tolist()) & set(worst["B"].tolist()))
    on_a = {k: float(np.mean(m["failures"].errors[worst["A"]]) * scale) if len(worst["A"]) else float("nan")
            for k, m in (("A", a), ("B", b))}
    return _section("Where it fails", (
        f"The {WORST} samples with the largest mean distance between predicted and labelled keypoints under each "
        "model, drawn with that model's predicted skeleton and the labelled truth as white rings; every caption "
        "gives both models' mean error on that sample, so a sample hard for both stands in both galleries and one "
        "that only one model gets wrong shows a small error for the other."), [
        "<h3>A's worst samples (A's prediction)</h3>",
        gallery(sections.worst_tiles(worst["A"], main, a["study"].coords[0], config, caption)),
        "<h3>B's worst samples (B's prediction)</h3>",
        gallery(sections.worst_tiles(worst["B"], main, b["study"].coords[0], config, caption)),
        paragraph(f"{len(shared)} of the {len(worst['A'])} worst samples are the same for both models. On A's worst "
                  f"samples the mean error is {fmt(on_a['A'], 1)} input px for A and {fmt(on_a['B'], 1)} for B.",
                  "note"),
    ], _cost(f"{len(main)} samples", seconds))
