"""`hgpose explore --checkpoint A --compare B`: the explore analyses that reduce to numbers (accuracy,
probes and CKA, skip vs low and lesions, joint dependency, calibration) for two models on the same
samples, side by side, with B - A and paired bootstrap intervals where a difference is a PCK."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from hgpose.coco_names import KEYPOINT_NAMES
from hgpose.explore import analyses as an
from hgpose.explore import calibration as ca
from hgpose.explore import figures as fg
from hgpose.explore.dependency import JointDependency, joint_dependency
from hgpose.explore.html import Section, esc, image, page, paragraph, table
from hgpose.explore.probes import cka_matrix, linear_probes, pooled_stages
from hgpose.explore.report import MIN_RELIABLE_SAMPLES, _jsonable, load_explore_model, load_samples
from hgpose.explore.sections import fmt
from hgpose.fileio import UserError, atomic_write_json, atomic_write_text

COMPARE_TITLES = ("Accuracy", "Where joint information lives", "Skip vs low branch and lesions",
                  "Joint dependency", "Calibration")


def _side(*items: tuple[str, str]) -> str:
    """Figures next to each other, each under a caption: items are (caption, html)."""
    return '<div class="side">' + "".join(f"<div><h3>{esc(c)}</h3>{h}</div>" for c, h in items) + "</div>"


def _measure(model, main, probe_set, dependency_set, batch_size, seed) -> dict:
    from hgpose.evaluate import counted_mask, normalized_distances, seed_normalizer

    normalizer = seed_normalizer(model.config.heatmap_size)
    study = an.lesion_study(model, main.images, main.keypoints, main.visibility, normalizer, batch_size=batch_size)
    counted = counted_mask(main.visibility)
    correct = np.stack([normalized_distances(c, main.keypoints, normalizer) < 0.5 for c in study.coords])
    values, changes = ca.pooled_pck_intervals(correct, counted, seed=seed)
    joint_interval, pooled_interval = ca.pck_intervals(correct[0], counted, seed=seed)
    features = pooled_stages(model, probe_set.images, batch_size=batch_size)
    coords, confidence = an.decode(an.heatmaps(model, probe_set.images, batch_size))
    probe_counted = counted_mask(probe_set.visibility)
    probe_correct = normalized_distances(coords, probe_set.keypoints, normalizer) < 0.5
    return {
        "study": study, "correct": correct[0], "counted": counted, "lesion_values": values,
        "lesion_changes": changes, "joint_interval": joint_interval, "pooled_interval": pooled_interval,
        "features": features, "probes": linear_probes(features, probe_set.keypoints, probe_set.visibility,
                                                      seed=seed),
        "cka": cka_matrix(features),
        "branches": an.branch_contributions(model, main.images, batch_size=batch_size),
        "dependency": joint_dependency(model, dependency_set.images, dependency_set.keypoints,
                                       dependency_set.visibility, batch_size=batch_size),
        "calibration": ca.calibrate(confidence, probe_correct, probe_counted),
    }


def write_compare_report(checkpoint_a, checkpoint_b, data, split: str = "val2017", samples: int = 64,
                         out="explore-compare", device="cpu", seed: int = 0, batch_size: int = 16,
                         probe_samples: int = 256, dependency_samples: int = 16, progress: bool = True) -> Path:
    """Write OUT/index.html and OUT/explore.json comparing model B with model A on the same samples."""
    from hgpose.progress import progress_bar

    started = time.perf_counter()
    device = torch.device(device)
    model_a, model_b = load_explore_model(checkpoint_a, device), load_explore_model(checkpoint_b, device)
    if model_a.config.input_size != model_b.config.input_size:
        raise UserError(f"{checkpoint_b}: input size {model_b.config.input_size} differs from {checkpoint_a}'s "
                        f"{model_a.config.input_size}; the two models must see the same crops")
    largest = 0 if 0 in (samples, probe_samples) else max(samples, probe_samples, dependency_samples)
    path_a = None if isinstance(checkpoint_a, torch.nn.Module) else checkpoint_a
    loaded = load_samples(data, split, model_a.config.input_size, largest, seed, path_a)
    main, probe_set, dependency_set = loaded.first(samples), loaded.first(probe_samples), loaded.first(
        dependency_samples)
    measured = {}
    for name, model in progress_bar((("A", model_a), ("B", model_b)), desc="explore compare", disable=not progress):
        measured[name] = _measure(model, main, probe_set, dependency_set, batch_size, seed)
    a, b = measured["A"], measured["B"]
    difference, pooled_difference = ca.paired_difference_intervals(a["correct"], b["correct"], a["counted"],
                                                                   seed=seed)
    sections = [
        _accuracy_section(a, b, difference, pooled_difference, len(main)),
        _probes_section(a, b, len(probe_set)),
        _branches_section(a, b, len(main)),
        _dependency_section(a, b, len(dependency_set)),
        _calibration_section(a, b, len(probe_set)),
    ]
    seconds = time.perf_counter() - started
    names = {"A": "an in-memory model" if path_a is None else str(checkpoint_a),
             "B": str(checkpoint_b) if not isinstance(checkpoint_b, torch.nn.Module) else "an in-memory model"}
    rows = [("A", names["A"]), ("B", names["B"]),
            ("data", f"{data}, split {split}: {len(main)} of its {loaded.split_size} person instances for "
                     f"accuracy and lesions, {len(probe_set)} for probes and calibration, {len(dependency_set)} "
                     "for the dependency matrix"),
            ("PCK", f"A {fmt(a['pooled_interval'].value)} ({fmt(a['pooled_interval'].low)}-"
                    f"{fmt(a['pooled_interval'].high)}), B {fmt(b['pooled_interval'].value)} "
                    f"({fmt(b['pooled_interval'].low)}-{fmt(b['pooled_interval'].high)}), B - A "
                    f"{float(pooled_difference.value):+.3f} ({float(pooled_difference.low):+.3f} to "
                    f"{float(pooled_difference.high):+.3f}, paired), {len(main)} samples"),
            ("built in", f"{seconds:.0f} s")]
    header = [table(None, rows, "meta")]
    if len(main) < MIN_RELIABLE_SAMPLES:
        header.append(paragraph(f"Only {len(main)} samples: most differences will be within their intervals.",
                                "warning"))
    html_path = atomic_write_text(Path(out) / "index.html", page("Two hourglasses compared", header, sections))
    summary = {"a": names["A"], "b": names["B"], "data": str(data), "split": split, "samples": len(main),
               "seconds": round(seconds, 1),
               "pck": {"a": a["pooled_interval"].value, "b": b["pooled_interval"].value,
                       "b_minus_a": pooled_difference.value,
                       "b_minus_a_interval": [pooled_difference.low, pooled_difference.high],
                       "per_joint_b_minus_a": dict(zip(KEYPOINT_NAMES, difference.value))},
               "probes_r2": {"a": a["probes"].position_r2, "b": b["probes"].position_r2},
               "dependency_drop": {"a": a["dependency"].confidence_drop, "b": b["dependency"].confidence_drop},
               "calibration": {k: {"ece": m["calibration"].ece, "auroc": m["calibration"].auroc}
                               for k, m in measured.items()}}
    atomic_write_json(Path(out) / "explore.json", _jsonable(summary))
    return html_path


def _accuracy_section(a, b, difference, pooled, n: int) -> Section:
    rows = [(name, fmt(pa), fmt(pb), f"{d:+.3f}" if np.isfinite(d) else "-",
             f"{lo:+.3f} to {hi:+.3f}" if np.isfinite(lo) else "-")
            for name, pa, pb, d, lo, hi in zip(KEYPOINT_NAMES, a["joint_interval"].value, b["joint_interval"].value,
                                               difference.value, difference.low, difference.high)]
    clear = [KEYPOINT_NAMES[j] for j in range(len(KEYPOINT_NAMES))
             if np.isfinite(difference.low[j]) and (difference.low[j] > 0 or difference.high[j] < 0)]
    return Section("accuracy", COMPARE_TITLES[0], (
        "Per-joint PCK of both models on the same samples (error bars: 95% bootstrap intervals over people), and "
        "the difference B - A with a paired bootstrap interval (the same people resampled for both models, so "
        "the interval reflects the difference, not the spread between people). A difference whose interval "
        "excludes 0 is one these samples can tell apart."), [
        _side(("A", image(fg.per_joint_figure(a["joint_interval"].value, a["counted"].sum(0), a["joint_interval"]),
                          "per-joint PCK of A")),
              ("B", image(fg.per_joint_figure(b["joint_interval"].value, b["counted"].sum(0), b["joint_interval"]),
                          "per-joint PCK of B"))),
        table(("joint", "PCK A", "PCK B", "B - A", "95% paired interval"), rows),
        paragraph(f"Pooled: B - A = {float(pooled.value):+.3f} ({float(pooled.low):+.3f} to "
                  f"{float(pooled.high):+.3f}). "
                  + (f"Joints whose difference excludes 0: {', '.join(clear)}." if clear else
                     "No joint's difference excludes 0 on these samples."), "note"),
    ], cost=f"{n} samples.")


def _probes_section(a, b, n: int) -> Section:
    stages = a["probes"].stages
    diff = b["probes"].position_r2 - a["probes"].position_r2
    limit = max(float(np.nanmax(np.abs(diff))) if np.isfinite(diff).any() else 0.0, 1e-3)
    cross = cka_matrix(a["features"], b["features"])

    def r2(m, who):
        return image(fg.matrix_figure(m["probes"].position_r2, stages, fg.SHORT_NAMES, f"{who}: held-out R\u00b2",
                                      vmin=0, vmax=1, label="R\u00b2"), f"probe R\u00b2 of {who}")

    mean_a, mean_b = (np.nanmean(m["probes"].position_r2, axis=1) for m in (a, b))
    return Section("probes", COMPARE_TITLES[1], (
        "The linear probes of the single-model report (held-out R\u00b2 of each joint's position read from each "
        "stage) for both models and their difference, then linear CKA between every stage of A and every stage of "
        "B: a high diagonal means the two models represent these samples alike stage by stage."), [
        _side(("A", r2(a, "A")), ("B", r2(b, "B"))),
        image(fg.matrix_figure(diff, stages, fg.SHORT_NAMES, "B - A: held-out R\u00b2", cmap="RdBu_r", vmin=-limit,
                               vmax=limit, label="R\u00b2 difference"), "probe R\u00b2 difference"),
        paragraph("Mean R\u00b2 over joints, A / B: " + ", ".join(
            f"{s} {fmt(x, 2)} / {fmt(y, 2)}" for s, x, y in zip(stages, mean_a, mean_b)) + ".", "note"),
        image(fg.matrix_figure(cross, [f"A {s}" for s in stages], [f"B {s}" for s in stages],
                               "linear CKA, stage of A (row) vs stage of B (column)", vmin=0, vmax=1, label="CKA",
                               cell=0.6), "CKA between the models' stages"),
        paragraph("Same stage in both models, CKA: " + ", ".join(
            f"{s} {fmt(cross[i, i], 2)}" for i, s in enumerate(stages)) + ".", "note"),
    ], cost=f"{n} samples, {len(stages)} stages x 17 joints per model.")


def _branches_section(a, b, n: int) -> Section:
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
    return Section("branches", COMPARE_TITLES[2], (
        "The skip share of each level's output RMS (which grows towards the low branch at outer levels by "
        "construction, so compare the two models rather than the levels) and the lesion study: PCK with each "
        "branch zeroed and its change against the intact model, with 95% paired bootstrap intervals."), [
        table(("level", "skip share A", "skip share B", "B - A"), shares),
        table(("condition", "PCK A", "PCK B", "change A [95%]", "change B [95%]"), rows),
    ], cost=f"{n} samples.")


def _dependency_section(a, b, n: int) -> Section:
    names = list(fg.SHORT_NAMES)
    da, db = a["dependency"].confidence_drop, b["dependency"].confidence_drop
    limit = max(float(np.nanmax(np.abs(np.stack([da, db])))), 1e-6)
    diff = db - da
    dlimit = max(float(np.nanmax(np.abs(diff))), 1e-6)

    def matrix(m, title):
        return image(fg.matrix_figure(m, names, names, title, cmap="RdBu_r", vmin=-limit, vmax=limit,
                                      label="confidence drop", cell=0.45), title)

    pairs = [(KEYPOINT_NAMES[i], KEYPOINT_NAMES[j], v) for i, j, v in
             JointDependency(diff, diff, a["dependency"].masked, 0.0).strongest_pairs(3)]
    return Section("dependency", COMPARE_TITLES[3], (
        "Confidence drop of joint i (row) when joint j (column) is hidden, for both models on one colour scale, "
        "and B - A (red: B depends more on that joint than A)."), [
        _side(("A", matrix(da, "A: confidence drop")), ("B", matrix(db, "B: confidence drop"))),
        image(fg.matrix_figure(diff, names, names, "B - A", cmap="RdBu_r", vmin=-dlimit, vmax=dlimit,
                               label="difference", cell=0.5), "dependency difference"),
        paragraph("Largest increases from A to B: " + "; ".join(
            f"{i} when {j} is hidden ({v:+.3f})" for i, j, v in pairs) + ".", "note"),
    ], cost=f"{n} samples, {int(a['dependency'].masked.sum())} masked keypoints per model.")


def _calibration_section(a, b, n: int) -> Section:
    rows = [("all", fmt(a["calibration"].ece), fmt(b["calibration"].ece), fmt(a["calibration"].auroc),
             fmt(b["calibration"].auroc))]
    rows += [(name, fmt(ea), fmt(eb), fmt(ua), fmt(ub)) for name, ea, eb, ua, ub in
             zip(KEYPOINT_NAMES, a["calibration"].per_joint_ece, b["calibration"].per_joint_ece,
                 a["calibration"].per_joint_auroc, b["calibration"].per_joint_auroc)]
    return Section("calibration", COMPARE_TITLES[4], (
        "Reliability diagrams of the heatmap peak as a confidence for both models (bars on the diagonal: "
        "calibrated), expected calibration error (0: calibrated) and AUROC of correct against wrong keypoints "
        "(0.5: chance)."), [
        _side(("A", image(fg.reliability_figure(a["calibration"]), "reliability of A")),
              ("B", image(fg.reliability_figure(b["calibration"]), "reliability of B"))),
        table(("joint", "ECE A", "ECE B", "AUROC A", "AUROC B"), rows),
    ], cost=f"{n} samples.")
