"""The third edition's sections of the explore report: what each stack fixes, what each channel detects,
where left and right are decided, how far each stage sees. Each opens with one plain sentence of what it
found, computed from its figures; the other sentences are computed too."""

from __future__ import annotations

import numpy as np

from hgpose.explore import figures
from hgpose.explore import instrument_figures as ifg
from hgpose.explore.analyses import to_input_coords
from hgpose.explore.dissection import JOINT_RADIUS, LIMB_RADIUS, chance_levels, channel_maps, iou_interval
from hgpose.explore.facing import BACK, CONFIDENT_ACCURACY, FRONT, UNDECIDED
from hgpose.explore.html import Section, gallery, image, paragraph, table
from hgpose.explore.sections import fmt, report_section
from hgpose.explore.stacks import ERROR_CLASSES
from hgpose.keypoints import KEYPOINT_NAMES

STACKS_TITLE = "What each stack fixes"
DISSECTION_TITLE = "What each channel detects"
FACING_TITLE = "Where left and right are decided"
ERF_TITLE = "How far each stage sees"
GALLERY_CHANNELS = 4  # detectors shown with their top-activating crops
GALLERY_CROPS = 4


def _range(low, high, digits: int = 2) -> str:
    return f"{fmt(low, digits)}-{fmt(high, digits)}"


def _with_finding(finding: str, intro: str) -> str:
    return f"{finding} {intro}"


# --- what each stack fixes ----------------------------------------------------------------------------


def stacks_section(study, crops, maps, truth, visibility, config, seconds: float, pixel=None) -> Section:
    """study: stacks.StackStudy on the main samples; maps (T, n, K, h, h) of the crops drawn; pixel: the
    per-pixel probe over every stack's stages (stacks.stacks_pixel_probes) or None."""
    stacks = len(study.pck)
    rows = []
    for t in range(stacks):
        change = "" if t == 0 else f"{study.pck[t] - study.pck[t - 1]:+.3f} ({study.change_low[t]:+.3f} to " \
                                   f"{study.change_high[t]:+.3f})"
        rows.append((f"stack {t + 1}", fmt(study.pck[t]), _range(study.low[t], study.high[t], 3), change,
                     *(f"{100 * s:.1f}%" for s in study.errors[t])))
    headers = ("output", "PCK", "95% interval", "change from the stack before (paired 95% interval)",
               *(f"{name} share" for name in ERROR_CLASSES))
    coords = np.stack([to_input_coords(study.coords[t][: len(crops)], config.input_size, config.heatmap_size)
                       for t in range(stacks)])
    figure = ifg.stack_maps_figure(np.asarray(crops), maps, coords,
                                   to_input_coords(truth, config.input_size, config.heatmap_size), visibility,
                                   config.input_size)
    if stacks == 1:
        finding = (f"This model has one hourglass: its only output scores PCK {fmt(study.pck[0])} "
                   f"({_range(study.low[0], study.high[0], 3)}); with several stacks this section compares them.")
    else:
        fixed = [t for t in range(1, stacks) if study.change_low[t] > 0]
        hurt = [t for t in range(1, stacks) if study.change_high[t] < 0]
        changed = [f"{name} {100 * study.errors[0, i]:.1f}% to {100 * study.errors[-1, i]:.1f}% (paired 95% "
                   f"interval of the change {100 * study.error_change_low[i]:+.1f} to "
                   f"{100 * study.error_change_high[i]:+.1f} points)"
                   for i, name in enumerate(ERROR_CLASSES) if i and (study.error_change_low[i] > 0
                                                                     or study.error_change_high[i] < 0)]
        finding = (f"From the first stack to the last, PCK goes from {fmt(study.pck[0])} to {fmt(study.pck[-1])}; "
                   + (f"stack(s) {', '.join(str(t + 1) for t in fixed)} raise it beyond the paired interval"
                      if fixed else "no stack raises it beyond the paired interval")
                   + (f", stack(s) {', '.join(str(t + 1) for t in hurt)} lower it beyond it" if hurt else "")
                   + (". Error classes that change beyond their paired interval: " + "; ".join(changed) + "."
                      if changed else ". No error class's share changes beyond its paired interval."))
    intro = (
        "A stacked hourglass (Newell et al. 2016) trains every stack's heatmaps against the targets (intermediate "
        "supervision) and feeds each stack's features and predictions into the next. Every stack's output is "
        "decoded and scored here as the last one is (the seed's PCK), with a paired bootstrap over people for "
        "the change between successive stacks, and every counted keypoint is put in one class: good (within "
        "the PCK radius, 0.5 c), inversion (not good, and within 0.5 c of its left/right twin's true position, "
        "closer to it than to its own), jitter (not good, within 1.5 c of its own joint), miss (the rest). "
        "The figure draws each stack's heatmaps (maximum over joints) on the same crops.")
    body = [table(headers, rows), image(figure, "heatmaps of each stack")]
    cost = f"{study.samples} samples, one forward pass"
    if pixel is not None:
        body += stack_probe_body(pixel)
        cost += (f"; the per-pixel probe over {len(pixel.stages)} stages of all stacks on {pixel.samples} samples, "
                 f"two forward passes per stack")
    return report_section(STACKS_TITLE, _with_finding(finding, intro), body, f"{cost}, {seconds:.1f} s.")


def stack_probe_note(pixel) -> str:
    """Per stack, its best-read stage and its head's read-out (mean held-out PCK over joints), so that a reader
    sees whether a later stack's features hold the joints more readably than the first's."""
    mean = np.nanmean(np.where(np.isfinite(pixel.pck), pixel.pck, np.nan), axis=1)
    stacks: dict[str, list[int]] = {}
    for i, name in enumerate(pixel.stages):
        stacks.setdefault(name.rsplit(" ", 1)[0], []).append(i)
    parts = []
    for stack, rows in stacks.items():
        best = max(rows, key=lambda i: np.nan_to_num(mean[i], nan=-1))
        parts.append(f"{stack}: best {pixel.stages[best].rsplit(' ', 1)[1]} {fmt(mean[best], 2)}, head "
                     f"{fmt(mean[rows[-1]], 2)}")
    return ("Per-pixel probe, held-out PCK averaged over joints, per stack: " + "; ".join(parts)
            + f" (chance {fmt(np.nanmean(pixel.chance), 2)}).")


def stack_probe_body(pixel) -> list[str]:
    return [
        "<h3>the per-pixel probe across the stacks' stages</h3>",
        image(figures.matrix_figure(pixel.pck, pixel.stages, figures.SHORT_NAMES,
                                    "per-pixel read-out: held-out PCK of each joint from each stage of each stack "
                                    "(the probe of 'Where joint information lives', same samples and folds)",
                                    vmin=0, vmax=1, label="PCK"), "per-pixel probe PCK per stack's stage and joint"),
        paragraph(stack_probe_note(pixel), "note"),
    ]


def stacks_numbers(study, pixel=None) -> dict:
    probes = {} if pixel is None else {"probe_stages": pixel.stages, "probe_pck": pixel.pck,
                                       "probe_samples": pixel.samples}
    return probes | {"pck": study.pck, "low": study.low, "high": study.high, "change_low": study.change_low,
            "change_high": study.change_high, "samples": study.samples,
            "errors": {name: study.errors[:, i] for i, name in enumerate(ERROR_CLASSES)},
            "error_change_low": dict(zip(ERROR_CLASSES, study.error_change_low)),
            "error_change_high": dict(zip(ERROR_CLASSES, study.error_change_high)),
            "per_joint": {name: study.per_joint[:, j] for j, name in enumerate(KEYPOINT_NAMES)}}


# --- what each channel detects ------------------------------------------------------------------------


def dissection_summary(trained, random, found) -> list[dict]:
    """Per stage: channels, detectors, parts covered, and the best detector with its IoU interval."""
    chance = chance_levels(trained, random)
    summary = []
    for s, name in enumerate(trained.stages):
        detectors = found[s]
        entry = {"stage": name, "channels": int(trained.active[s].shape[1]), "detectors": len(detectors),
                 "parts": sorted({d.part for d in detectors}, key=trained.parts.index), "best": None}
        if detectors:
            d = detectors[0]
            low, high = iou_interval(trained, s, d.channel, trained.parts.index(d.part))
            entry["best"] = {"channel": d.channel, "part": d.part, "iou": d.iou, "low": low, "high": high,
                             "chance": float(chance[s, trained.parts.index(d.part)])}
        summary.append(entry)
    return summary


def dissection_section(trained, random, found, tiles, seconds: float, threshold: float) -> Section:
    """trained, random: dissection.Dissection of the model and of a randomly initialised twin; found:
    dissection.detectors(trained, random); tiles: (png, caption) of the best detectors' top crops."""
    summary = dissection_summary(trained, random, found)
    chance = chance_levels(trained, random)
    total = sum(e["channels"] for e in summary)
    count = sum(e["detectors"] for e in summary)
    covered = sorted({p for e in summary for p in e["parts"]}, key=trained.parts.index)
    rows = [(e["stage"], e["channels"], e["detectors"], len(e["parts"]), ", ".join(e["parts"][:8])
             + (" ..." if len(e["parts"]) > 8 else ""),
             "-" if e["best"] is None else f"channel {e['best']['channel']}: {e['best']['part']} "
                                           f"{e['best']['iou']:.2f} ({_range(e['best']['low'], e['best']['high'])})",
             "-" if e["best"] is None else fmt(e["best"]["chance"], 2)) for e in summary]
    if count:
        best = max((e for e in summary if e["best"]), key=lambda e: e["best"]["iou"])
        most = max(summary, key=lambda e: e["detectors"])
        finding = (f"{count} of the {total} channels (all stages) detect a body part beyond chance, covering "
                   f"{len(covered)} of the {len(trained.parts)} parts; {most['stage']} has the most "
                   f"({most['detectors']} of {most['channels']}), and the best is {best['stage']} channel "
                   f"{best['best']['channel']} for {best['best']['part']} (IoU {best['best']['iou']:.2f}, 95% "
                   f"interval {_range(best['best']['low'], best['best']['high'])}, chance "
                   f"{best['best']['chance']:.2f}).")
    else:
        finding = (f"None of the {total} channels detects a body part beyond chance: no channel's IoU interval "
                   "clears the best IoU that shuffled regions or a randomly initialised model reach.")
    intro = (
        "Network dissection (Bau et al. 2017) for pose: each channel of each stage is thresholded at its own top "
        f"{100 * trained.top:.1f}% of activations over these samples (the share of the crop a joint's region "
        "covers on average, so that a perfect joint detector could reach IoU 1), upsampled to a "
        f"{trained.side}x{trained.side} grid over the crop, and compared with every part's region: a joint's is "
        f"a disc of radius {JOINT_RADIUS:g} x the crop side around the keypoint, a limb's the segment between "
        f"two keypoints of the COCO skeleton thickened to {LIMB_RADIUS:g} x the crop side. IoU is pooled over "
        "the samples where the part is labelled. A channel is named by its best part and counted as a detector "
        f"when that IoU reaches {threshold:g} (network dissection's threshold) and the lower end of its 95% "
        "bootstrap interval beats both chance levels: the best IoU any channel of the same stage reaches when "
        "each sample's activations are compared with another sample's regions (a channel that fires at a fixed "
        "place of the crop scores as well there), and the best IoU any channel of the same stage of a randomly "
        "initialised model reaches.")
    labels = ifg.part_labels()
    body = [
        image(figures.matrix_figure(trained.best(), trained.stages, labels,
                                    "best IoU of any channel, stage (row) x part "
                               "(column)", vmin=0, vmax=max(0.1, float(np.nanmax(trained.best()))), label="IoU",
                               cell=0.48), "dissection: best IoU per stage and part"),
        image(figures.matrix_figure(chance, trained.stages, labels,
                                    "chance: the larger of the shuffled-regions and the "
                               "random model's best IoU", vmin=0, vmax=max(0.1, float(np.nanmax(trained.best()))),
                               label="IoU", cell=0.48), "dissection: chance level per stage and part"),
        table(("stage", "channels", "detectors", "parts covered", "which", "best detector: IoU (95% interval)",
               "its chance"), rows),
    ]
    if tiles:
        body += ["<h3>top-activating crops of the best detectors</h3>",
                 paragraph("Each row: one channel's four most strongly activated crops, the activation upsampled "
                           "over the grey crop, coloured and outlined in white where it exceeds the channel's "
                           "threshold.", "note"), gallery(tiles)]
    return report_section(DISSECTION_TITLE, _with_finding(finding, intro), body,
                    f"{trained.samples} samples, {len(trained.stages)} stages, {total} channels x "
                    f"{len(trained.parts)} parts; two forward passes of the model and two of a randomly initialised "
                    f"twin; {seconds:.1f} s.")


def dissection_tiles(model, images, trained, found, stack: int = -1) -> list[tuple[bytes, str]]:
    """Gallery tiles: for the best GALLERY_CHANNELS detectors over all stages, their top GALLERY_CROPS crops."""
    best = sorted((d for stage in found for d in stage), key=lambda d: -d.iou)[:GALLERY_CHANNELS]
    tiles = []
    for d in best:
        s = trained.stages.index(d.stage)
        top = np.argsort(-trained.peak[s][:, d.channel], kind="stable")[:GALLERY_CROPS]
        maps = channel_maps(model, images[top], d.stage, d.channel, stack)
        for rank, (position, activation) in enumerate(zip(top, maps)):
            tiles.append((ifg.overlay_tile(np.asarray(images[position]), activation, trained.thresholds[s][d.channel]),
                          f"{d.stage} ch {d.channel} ({d.part}, IoU {d.iou:.2f}): crop {rank + 1}"))
    return tiles


# --- how far each stage sees --------------------------------------------------------------------------


def erf_section(fields, samples: int, seconds: float) -> Section:
    """fields: receptive_field.ReceptiveFields (17 joints, then the stages)."""
    k = len(KEYPOINT_NAMES)
    r50, r90 = fields.radii(0.5), fields.radii(0.9)
    low, high = fields.intervals(0.9)
    heights = fields.in_person_heights(r90)
    even = fields.radii(0.9, uniform=True)
    rows = [(name if i >= k else figures.SHORT_NAMES[i], fmt(r50[i], 0), fmt(r90[i], 0), _range(low[i], high[i], 0),
             fmt(heights[i], 2), fmt(even[i], 0), fmt(fields.theoretical[i], 0))
            for i, name in enumerate(fields.names)]
    joints = np.flatnonzero(np.isfinite(r90[:k]))
    if len(joints):
        far, near = joints[np.argmax(r90[joints])], joints[np.argmin(r90[joints])]
        apart = low[far] > high[near]
        finding = (f"Each joint's heatmap draws 90% of its input gradient from within {fmt(np.nanmin(r90[:k]), 0)}-"
                   f"{fmt(np.nanmax(r90[:k]), 0)} input pixels ({fmt(np.nanmin(heights[:k]), 2)}-"
                   f"{fmt(np.nanmax(heights[:k]), 2)} person heights) of it, where a gradient spread evenly over "
                   f"the crop would need {fmt(np.nanmin(even[:k]), 0)}-{fmt(np.nanmax(even[:k]), 0)} px, and the "
                   f"theoretical field is {fmt(fields.theoretical[0], 0)} pixels wide; "
                   + (f"{KEYPOINT_NAMES[far]} reaches furthest ({fmt(r90[far], 0)} px, "
                      f"{_range(low[far], high[far], 0)}) "
                      f"and {KEYPOINT_NAMES[near]} least ({fmt(r90[near], 0)} px, {_range(low[near], high[near], 0)}), "
                      "beyond their intervals." if apart else
                      f"no joint clearly reaches further than another: the furthest, {KEYPOINT_NAMES[far]} "
                      f"({fmt(r90[far], 0)} px, {_range(low[far], high[far], 0)}), and the nearest, "
                      f"{KEYPOINT_NAMES[near]} ({fmt(r90[near], 0)} px, {_range(low[near], high[near], 0)}), have "
                      "overlapping 95% intervals."))
    else:
        finding = "None of these samples has a labelled keypoint on the heatmap: no receptive field was measured."
    intro = (
        "The theoretical receptive field of a unit is every input pixel that can change it; the effective one "
        "(Luo et al. 2016) is how much each pixel does: the magnitude of the unit's gradient with respect to "
        "the input, summed over colours, normalised to sum 1 per sample, centred on the unit and averaged over "
        "samples. Units: each joint's heatmap at its labelled keypoint, and each stage's channels summed at the "
        "grid cell holding the keypoint (averaged over up to 4 of the sample's labelled joints). The table gives "
        "the radii (input pixels) of the discs holding 50% and 90% of the mass, the 90% radius in person heights "
        "(a person is about 0.8 crop sides tall: the crop is 1.25 times the box), a 95% bootstrap interval over "
        "samples, the 90% radius of a map spread evenly over the crop from the same centres (the crop bounds every "
        "radius: a field near that value covers the crop), and the theoretical field's side. Circles in the "
        "maps: 50% (dashed) and 90% (solid); colours are the square root of the mass, each map cropped to one "
        "crop side around its unit.")
    body = [
        image(ifg.centred_maps_figure(fields.mean_maps[:k], figures.SHORT_NAMES, fields.input_size, r50[:k], r90[:k]),
              "effective receptive field per joint"),
        image(ifg.centred_maps_figure(fields.mean_maps[k:], fields.names[k:], fields.input_size, r50[k:], r90[k:],
                                      columns=min(9, len(fields.names) - k)), "effective receptive field per stage"),
        table(("unit", "50% radius (px)", "90% radius (px)", "its 95% interval", "90% radius (person heights)",
               "90% radius of an even map (px)", "theoretical side (px)"), rows),
    ]
    return report_section(ERF_TITLE, _with_finding(finding, intro), body,
                    f"{samples} samples, one forward pass per sample on one copy per labelled joint and "
                    f"{len(fields.names) - k + 1} backward passes; {seconds:.1f} s.")


def erf_numbers(fields) -> dict:
    low, high = fields.intervals(0.9)
    return {"names": fields.names, "radius50": fields.radii(0.5), "radius90": fields.radii(0.9),
            "even_radius90": fields.radii(0.9, uniform=True), "radius90_low": low,
            "radius90_high": high, "theoretical_side": fields.theoretical, "samples": len(fields.profiles)}


# --- where left and right are decided ------------------------------------------------------------------


def facing_section(facing, probes, readout, network_share, head_bins, probe_bins, probe_stage, known,
                   seconds: float) -> Section:
    """facing (N,) from the keypoints; probes: facing.FacingProbes; readout (S,) per-stage read-out inversion
    share (wrong_side_share of the pixel probe's stages, which the facing probes share); network_share: the
    network's own;
    head_bins, probe_bins: facing.RateByBin; known: (agreeing, compared) against the generator, or None."""
    decided = int((facing != UNDECIDED).sum())
    lows = np.nan_to_num(probes.low, nan=-1.0)
    decodable = [s for s, low in zip(probes.stages, lows) if low >= CONFIDENT_ACCURACY]
    first = decodable[0] if decodable else None
    lowest = int(np.nanargmin(readout)) if np.isfinite(readout).any() else None
    if np.isfinite(probes.accuracy).any():
        best = int(np.nanargmax(probes.accuracy))
        finding = (f"Facing is read from {probes.stages[best]} best (held-out accuracy "
                   f"{fmt(probes.accuracy[best], 2)}, "
                   f"{_range(probes.low[best], probes.high[best])}, against {fmt(probes.majority, 2)} for always "
                   "answering the commoner facing); "
                   + (f"{first} is the first stage whose interval lies above {CONFIDENT_ACCURACY:.0%}"
                      if first else f"no stage's interval lies above {CONFIDENT_ACCURACY:.0%}")
                   + ("" if lowest is None else f"; of the left/right keypoints the per-pixel read-out places on "
                      f"their pair, it puts fewest on the wrong side at {probes.stages[lowest]} "
                      f"({100 * readout[lowest]:.1f}%; the network's own output {100 * network_share:.1f}%)") + ".")
    else:
        finding = (f"Too few people with a decided facing ({decided}) in both directions for a held-out probe.")
    if known is not None:
        finding += (f" The facing derived from the keypoints agrees with the generator's on {known[0]} of the "
                    f"{known[1]} decided people.")
    intro = (
        "Left/right inversions are the commonest keypoint error. A person's facing is derived from its labelled "
        "keypoints (hgpose.explore.facing): seen along its own body axis (mid-hips to mid-shoulders), it faces the "
        "camera when its left shoulder and hip appear on the image's right of their right twins; when the "
        "shoulders and hips nearly overlap (a profile) the ears and eyes decide, else it is undecided. Each "
        "stage's pooled features (the pooled probe's) are read out linearly for facing (ridge, the per-pixel "
        "probe's folds), held-out accuracy with a 95% bootstrap interval; the line is, per stage, the per-pixel "
        "read-out's wrong-side share: of its left/right keypoints that land within the PCK radius of their own or "
        "their twin's position, the share on the twin (a read-out that finds nothing gets no side wrong). The "
        "tables relate inversions of the network's output (a sample with any left or right keypoint on its twin) "
        "to confidence: the heatmap peaks of the lateral joints (the head's) and the best "
        "facing probe's margin, in three equal-count bins with Wilson intervals.")
    figure = ifg.stage_bars_figure(probes.stages, probes.accuracy, probes.low, probes.high, probes.majority,
                                   "held-out accuracy of a linear read-out of facing, per stage", "facing accuracy",
                                   second=readout, second_label="read-out wrong-side share")

    def bin_rows(bins):
        return [(f"{fmt(bins.edges[b], 2)}-{fmt(bins.edges[b + 1], 2)}", int(bins.count[b]),
                 f"{100 * bins.rate[b]:.1f}%" if np.isfinite(bins.rate[b]) else "-",
                 f"{100 * bins.low[b]:.1f}-{100 * bins.high[b]:.1f}%" if np.isfinite(bins.low[b]) else "-")
                for b in range(len(bins.rate))]

    stage_rows = [(s, fmt(a, 2), _range(lo, hi), f"{100 * r:.1f}%" if np.isfinite(r) else "-")
                  for s, a, lo, hi, r in zip(probes.stages, probes.accuracy, probes.low, probes.high, readout)]
    body = [
        image(figure, "facing probe accuracy per stage"),
        table(("stage", "facing accuracy", "95% interval", "read-out wrong-side share"), stage_rows),
        "<h3>inversion rate of the network by the head's confidence (mean peak of the labelled left/right joints)</h3>",
        table(("confidence", "samples", "with an inversion", "95% interval"), bin_rows(head_bins)),
        f"<h3>inversion rate by the facing probe's margin ({probe_stage})</h3>",
        table(("margin", "samples", "with an inversion", "95% interval"), bin_rows(probe_bins)),
        paragraph(f"{decided} of the {len(facing)} people have a decided facing ({int((facing == FRONT).sum())} "
                  f"towards the camera, {int((facing == BACK).sum())} away); the probes use only them.", "note"),
    ]
    return report_section(FACING_TITLE, _with_finding(finding, intro), body,
                    f"{len(facing)} samples (the probe samples), {len(probes.stages)} stages, {probes.folds}-fold "
                    f"ridge read-outs of the pooled features; {seconds:.1f} s.")
