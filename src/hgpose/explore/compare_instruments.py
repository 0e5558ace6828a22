"""The third edition's instruments in `hgpose explore --compare`: what each stack fixes and how far each stage
sees, for models A and B on the same samples, side by side. Kept beside compare.py (long enough) and built from
the single-model sections' measurements (stacks.stack_study, receptive_field.effective_receptive_fields)."""

from __future__ import annotations

import numpy as np

from hgpose.explore import figures
from hgpose.explore import instrument_figures as ifg
from hgpose.explore.html import Section, esc, image, paragraph, table
from hgpose.explore.instrument_sections import ERF_TITLE, STACKS_TITLE, erf_numbers, stacks_numbers
from hgpose.explore.receptive_field import effective_receptive_fields
from hgpose.explore.sections import fmt
from hgpose.explore.stacks import ERROR_CLASSES, stack_study
from hgpose.keypoints import KEYPOINT_NAMES


def measure_stacks(model, main, batch_size: int, seed: int):
    """Every stack of one model scored on the main samples (stacks.StackStudy)."""
    return stack_study(model, main.images, main.keypoints, main.visibility, batch_size=batch_size, seed=seed)


def measure_fields(model, erf_set):
    """The effective receptive fields of one model's last hourglass on erf_set (ReceptiveFields)."""
    return effective_receptive_fields(model, erf_set.images, erf_set.keypoints, erf_set.visibility)


def _section(title: str, intro: str, body, cost: str) -> Section:
    return Section(title.lower().replace(",", "").replace(" ", "-"), title, intro, list(body), cost)


def _side(*items: tuple[str, str]) -> str:
    return '<div class="side">' + "".join(f"<div><h3>{esc(c)}</h3>{h}</div>" for c, h in items) + "</div>"


# --- what each stack fixes ----------------------------------------------------------------------------


def stack_sentence(label: str, study) -> str:
    """One model's stacks in a clause: its first and last stack's PCK and whether a later stack raises it
    beyond the paired interval."""
    stacks = len(study.pck)
    if stacks == 1:
        return f"{label} has one hourglass (PCK {fmt(study.pck[0])})"
    raising = [t + 1 for t in range(1, stacks) if study.change_low[t] > 0]
    return (f"{label}'s {stacks} stacks go from PCK {fmt(study.pck[0])} to {fmt(study.pck[-1])}, "
            + (f"stack(s) {', '.join(map(str, raising))} raising it beyond the paired interval" if raising else
               "no stack raising it beyond the paired interval"))


def stacks_compare_section(studies: dict, seconds: float) -> Section:
    """studies: {"A": StackStudy, "B": StackStudy} on the same samples."""
    rows = []
    for label, study in studies.items():
        for t in range(len(study.pck)):
            change = "" if t == 0 else (f"{study.pck[t] - study.pck[t - 1]:+.3f} ({study.change_low[t]:+.3f} to "
                                        f"{study.change_high[t]:+.3f})")
            rows.append((f"{label} stack {t + 1}", fmt(study.pck[t]), f"{fmt(study.low[t])}-{fmt(study.high[t])}",
                         change, *(f"{100 * s:.1f}%" for s in study.errors[t])))
    finding = "; ".join(stack_sentence(label, study) for label, study in studies.items()) + "."
    labels = [f"{label} stack {t + 1}" for label, study in studies.items() for t in range(len(study.pck))]
    joined = {name: np.concatenate([getattr(study, name) for study in studies.values()])
              for name in ("pck", "low", "high")}
    inversions = np.concatenate([study.errors[:, ERROR_CLASSES.index("inversion")] for study in studies.values()])
    figure = ifg.stage_bars_figure(labels, joined["pck"], joined["low"], joined["high"], None,
                                   "PCK of every stack's output (95% interval over people)", "PCK",
                                   second=inversions, second_label="inversion share")
    return _section(STACKS_TITLE, finding + (
        " Every stack's output of each model is decoded and scored as its last one is (the seed's PCK), with a "
        "paired bootstrap over people for the change from the stack before, and every counted keypoint is put in "
        "one class: good (within the PCK radius), inversion (on its left/right twin), jitter (within 1.5 c of "
        "its own joint), miss (the rest). The single-model report draws each stack's heatmaps."), [
        table(("output", "PCK", "95% interval", "change from the stack before (paired 95% interval)",
               *(f"{name} share" for name in ERROR_CLASSES)), rows),
        image(figure, "PCK per stack of A and B"),
    ], f"{studies['A'].samples} samples, one forward pass per model; {seconds:.1f} s for both models.")


# --- how far each stage sees --------------------------------------------------------------------------


def erf_finding(fields: dict) -> str:
    """The two models' joints' 90% radii, and the joint whose radius differs most between them, with both
    intervals: named as a difference only where the intervals do not overlap."""
    k = len(KEYPOINT_NAMES)
    r90 = {label: f.radii(0.9)[:k] for label, f in fields.items()}
    bounds = {label: f.intervals(0.9) for label, f in fields.items()}
    if not all(np.isfinite(r).any() for r in r90.values()):
        return "A sample set with no labelled keypoint on the heatmap: no receptive field was measured."
    text = "; ".join(f"{label}'s joints draw 90% of their input gradient from within {fmt(np.nanmin(r), 0)}-"
                     f"{fmt(np.nanmax(r), 0)} px" for label, r in r90.items())
    gap = np.abs(r90["B"] - r90["A"])
    if not np.isfinite(gap).any():
        return text + "."
    j = int(np.nanargmax(gap))
    (a_low, a_high), (b_low, b_high) = ((low[j], high[j]) for low, high in (bounds["A"], bounds["B"]))
    apart = a_low > b_high or b_low > a_high
    return text + (f"; the {KEYPOINT_NAMES[j]} differs most (A {fmt(r90['A'][j], 0)} px, {fmt(a_low, 0)}-"
                   f"{fmt(a_high, 0)}; B {fmt(r90['B'][j], 0)} px, {fmt(b_low, 0)}-{fmt(b_high, 0)}), "
                   + ("beyond both intervals." if apart else "within overlapping intervals: no joint's reach is "
                      "shown to differ."))


def erf_compare_section(fields: dict, samples: int, seconds: float) -> Section:
    """fields: {"A": ReceptiveFields, "B": ReceptiveFields} on the same samples."""
    k = len(KEYPOINT_NAMES)
    radii = {label: (f.radii(0.5), f.radii(0.9), *f.intervals(0.9)) for label, f in fields.items()}
    names = list(dict.fromkeys(fields["A"].names + fields["B"].names))  # stages differ when depths do
    rows = []
    for name in names:
        row = [figures.SHORT_NAMES[KEYPOINT_NAMES.index(name)] if name in KEYPOINT_NAMES else name]
        for label, f in fields.items():
            if name in f.names:
                i = f.names.index(name)
                r50, r90, low, high = (values[i] for values in radii[label])
                row += [fmt(r50, 0), f"{fmt(r90, 0)} ({fmt(low, 0)}-{fmt(high, 0)})", fmt(f.theoretical[i], 0)]
            else:
                row += ["-", "-", "-"]
        rows.append(tuple(row))
    maps = [(label, image(ifg.centred_maps_figure(f.mean_maps[:k], figures.SHORT_NAMES, f.input_size,
                                                  radii[label][0][:k], radii[label][1][:k], columns=6),
                          f"effective receptive field per joint of {label}")) for label, f in fields.items()]
    return _section(ERF_TITLE, erf_finding(fields) + (
        " The effective receptive field (Luo et al. 2016) of each joint's heatmap at its labelled keypoint and of "
        "each stage's channels at the keypoint's cell: the input gradient's magnitude, normalised per sample, "
        "centred on the unit and averaged; the radii (input pixels) of the discs holding 50% and 90% of it, the "
        "90% radius with its 95% bootstrap interval over samples, and the theoretical field's side."), [
        _side(*maps),
        table(("unit", *(f"{label} {what}" for label in fields for what in ("50% (px)", "90% (px, 95% interval)",
                                                                              "theoretical (px)"))), rows),
        paragraph("Circles: 50% (dashed) and 90% (solid) of each mean map's mass.", "note"),
    ], f"{samples} samples, one backward pass per unit and sample for each model; {seconds:.1f} s for both models.")


def instrument_numbers(measured: dict) -> dict:
    """explore.json's entries for the two instruments, per model."""
    return {"stacks": {label.lower(): stacks_numbers(m["stacks"]) for label, m in measured.items()},
            "receptive_fields": {label.lower(): erf_numbers(m["fields"]) for label, m in measured.items()}}
