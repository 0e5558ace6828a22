"""`hgpose explore`: run every analysis of hgpose.explore.analyses on samples of a split and write one
self-contained static HTML page (OUT/index.html, figures embedded as PNG data URIs) plus the numbers
behind it (OUT/explore.json)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from hgpose.coco_names import KEYPOINT_NAMES
from hgpose.explore import analyses as an
from hgpose.explore import figures as fg
from hgpose.explore.html import Section, esc, gallery, image, page, paragraph, table
from hgpose.fileio import UserError, atomic_write_json, atomic_write_text
from hgpose.model import HourglassNet, count_parameters, load_model

SECTION_TITLES = (
    "Heatmaps", "Activations", "Skip vs low branch", "Saliency", "Occlusion sensitivity", "Lesion study",
    "Where it fails",
)
SALIENCY_RADIUS = 0.1  # of the crop side: "near the joint"


@dataclass
class Samples:
    """Person crops of a split with their truth, the unreadable ones already dropped."""

    images: torch.Tensor  # (N, 3, S, S) uint8
    keypoints: np.ndarray  # (N, K, 2) heatmap coordinates
    visibility: np.ndarray  # (N, K) COCO flags, 0 off the heatmap
    ann_ids: np.ndarray  # (N,)
    split_size: int  # person instances in the whole split
    unreadable: int


def load_samples(data, split: str, input_size: int, samples: int, seed: int = 0, checkpoint=None,
                 batch_size: int = 32) -> Samples:
    """A seeded random `samples` instances of the split (all of them for 0), crops in memory."""
    from hgpose.data.dataset import PersonDataset
    from hgpose.data.loader import make_loader
    from hgpose.evaluate import load_eval_index

    index = load_eval_index(data, split, Path(checkpoint) if checkpoint is not None else Path("."))
    total = len(index)
    if total == 0:
        raise UserError(f"{index.annotation_file}: split {split} holds no person instances")
    if 0 < samples < total:
        keep = np.sort(np.random.default_rng(seed).choice(total, samples, replace=False))
        index = index.subset(keep)
    dataset = PersonDataset(index, input_size=input_size)
    parts: dict[str, list] = {"image": [], "keypoints": [], "visibility": [], "valid": [], "index": []}
    for batch in make_loader(dataset, batch_size, shuffle=False):
        for key in parts:
            parts[key].append(batch[key])
    cat = {key: torch.cat(values) for key, values in parts.items()}
    valid = cat["valid"].bool()
    if not valid.any():
        raise UserError(f"{index.image_dir}: none of the {len(valid)} chosen samples' images could be read")
    return Samples(cat["image"][valid], cat["keypoints"][valid].numpy(), cat["visibility"][valid].numpy(),
                   index.ann_ids[cat["index"][valid].numpy()], total, int((~valid).sum()))


def _shown(samples: Samples, count: int) -> np.ndarray:
    """The samples drawn in the per-sample figures: the most labelled keypoints first (stable)."""
    labelled = (samples.visibility > 0).sum(axis=1)
    return np.argsort(-labelled, kind="stable")[:count]


def _fmt(x, digits: int = 3) -> str:
    return "-" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def write_explore_report(checkpoint, data, split: str = "val2017", samples: int = 64, out="explore",
                         device="cpu", show: int = 4, occlusion_samples: int = 2, seed: int = 0,
                         batch_size: int = 16, progress: bool = True) -> Path:
    """Run the seven analyses and write OUT/index.html and OUT/explore.json; returns the HTML path.

    checkpoint: a path or an HourglassNet; samples: instances of the split the split-wide analyses
    (skip vs low, lesion study, failures) use, 0 = all; show: samples drawn in the per-sample figures
    (heatmaps, saliency), occlusion_samples of them also get the (slower) occlusion maps.
    """
    from hgpose.progress import progress_bar

    started = time.perf_counter()
    device = torch.device(device)
    if isinstance(checkpoint, HourglassNet):
        model = checkpoint.to(device).eval()
    else:
        model = load_model(checkpoint, device=device)
    config = model.config
    if config.num_keypoints != len(KEYPOINT_NAMES):
        raise UserError(f"explore needs a model of the {len(KEYPOINT_NAMES)} COCO keypoints, "
                        f"this one predicts {config.num_keypoints}")
    out = Path(out)
    # before the progress bar, so that a bad --data or --split is one clean line
    data_set = load_samples(data, split, config.input_size, samples, seed, _checkpoint_path(checkpoint))
    bar = progress_bar(total=len(SECTION_TITLES) + 1, desc="explore", unit="step", disable=not progress,
               dynamic_ncols=True)
    try:
        return _analyse_and_write(model, data_set, bar, checkpoint, data, split, samples, out, show,
                                  occlusion_samples, batch_size, started)
    finally:
        bar.close()


def _checkpoint_path(checkpoint):
    """The checkpoint's path, or None for an in-memory model."""
    return None if isinstance(checkpoint, HourglassNet) else checkpoint


def _analyse_and_write(model, data_set: Samples, bar, checkpoint, data, split, samples, out, show,
                       occlusion_samples, batch_size, started) -> Path:
    from hgpose.evaluate import seed_normalizer

    def step(name: str):
        bar.set_description(f"explore: {name}")

    config = model.config
    normalizer = seed_normalizer(config.heatmap_size)
    shown = _shown(data_set, show)
    crops = data_set.images[shown]
    n = len(data_set.images)
    sections, numbers = [], {}

    step("heatmaps")
    predicted = an.heatmaps(model, crops, batch_size)
    pred_coords, confidence = an.decode(predicted)
    targets = an.target_heatmaps(data_set.keypoints[shown], data_set.visibility[shown], config.heatmap_size)
    sections.append(_heatmaps_section(crops, predicted, targets, pred_coords, confidence, data_set, shown,
                                      config))
    bar.update()

    step("activations")
    stages = an.activations(model, crops[:2], batch_size=batch_size)
    sections.append(_activations_section(crops[:2], stages))
    bar.update()

    step("skip vs low branch")
    contributions = an.branch_contributions(model, data_set.images, batch_size=batch_size)
    sections.append(_branch_section(contributions))
    numbers["branches"] = {k: np.asarray(v).tolist() for k, v in asdict(contributions).items()} | {
        "skip_share": contributions.skip_share.tolist()}
    bar.update()

    step("saliency")
    maps = an.saliency(model, crops, list(range(config.num_keypoints)), batch_size=max(1, batch_size // 2))
    input_coords = an.to_input_coords(pred_coords, config.input_size, config.heatmap_size)
    radius = SALIENCY_RADIUS * config.input_size
    shares = an.saliency_share(maps, input_coords, radius)
    uniform = an.uniform_share(config.input_size, radius)
    sections.append(_saliency_section(crops, maps, input_coords, shares, uniform))
    numbers["saliency"] = {"radius_px": radius, "uniform_share": uniform,
                           "mean_share": float(np.nanmean(shares)),
                           "mean_share_per_joint": np.nanmean(shares, axis=0).tolist()}
    bar.update()

    step("occlusion")
    occluded = [an.occlusion(model, crop, batch_size=batch_size) for crop in crops[:occlusion_samples]]
    sections.append(_occlusion_section(crops[:occlusion_samples], occluded, config.input_size))
    bar.update()

    step("lesions")
    study = an.lesion_study(model, data_set.images, data_set.keypoints, data_set.visibility, normalizer,
                            batch_size=batch_size)
    sections.append(_lesion_section(study, n))
    numbers["lesions"] = {name: float(v) for name, v in zip(study.names, study.overall)}
    bar.update()

    step("failures")
    result = an.failures(study.coords[0], data_set.keypoints, data_set.visibility, normalizer, worst=8)
    sections.append(_failures_section(result, data_set, study.coords[0], config, n))
    numbers["pck"] = {"overall": result.overall,
                      "per_joint": dict(zip(KEYPOINT_NAMES, result.per_joint.tolist()))}
    bar.update()

    step("write")
    seconds = time.perf_counter() - started
    header = _header(checkpoint, data, split, data_set, config, model, result.overall, seconds, samples)
    html_path = atomic_write_text(out / "index.html", page("Inside the hourglass", header, sections))
    summary = {"checkpoint": str(_checkpoint_path(checkpoint)), "data": str(data), "split": split, "samples": n,
               "seconds": round(seconds, 1), **numbers}
    atomic_write_json(out / "explore.json", summary)
    bar.update()
    return html_path


# --- sections ---------------------------------------------------------------------------------------


def _header(checkpoint, data, split, data_set: Samples, config, model, pck_value, seconds, samples
            ) -> list[str]:
    n = len(data_set.images)
    source = "an in-memory model" if isinstance(checkpoint, HourglassNet) else str(checkpoint)
    rows = [
        ("checkpoint", source),
        ("model", f"{config.num_stacks} hourglass(es) of depth {config.depth}, {config.features} features, "
                  f"{config.input_size}x{config.input_size} input, "
                  f"{config.heatmap_size}x{config.heatmap_size} heatmaps, "
                  f"{count_parameters(model):,} parameters"),
        ("data", f"{data}, split {split}: {n} of its {data_set.split_size} person instances"
                 + (f" ({data_set.unreadable} unreadable, skipped)" if data_set.unreadable else "")),
        ("PCK on these samples", f"{_fmt(pck_value)} (the seed's: c = heatmap side / 10, r = 0.5)"),
        ("built in", f"{seconds:.0f} s"),
    ]
    again = (f"hgpose explore --checkpoint {source} --data {data} --split {split} --samples {samples} "
             f"--out DIR")
    note = (f'<p class="note">Rebuild with <code>{esc(again)}</code>. Images are person crops exactly as '
            "the network sees them (a square 1.25 times the person box).</p>")
    return [table(None, rows, "meta"), note]


def _heatmaps_section(crops, predicted, targets, coords, confidence, data_set, shown, config) -> Section:
    scale = config.input_size / config.heatmap_size
    body = []
    for i, position in enumerate(shown):
        truth = an.to_input_coords(data_set.keypoints[position], config.input_size, config.heatmap_size)
        figure = fg.heatmap_figure(crops[i].numpy(), predicted[i], targets[i],
                                   an.to_input_coords(coords[i], config.input_size, config.heatmap_size),
                                   confidence[i], truth, data_set.visibility[position])
        body += [f"<h3>sample {i + 1} (annotation {int(data_set.ann_ids[position])})</h3>",
                 image(figure, f"heatmaps of sample {i + 1}")]
    return Section("heatmaps", SECTION_TITLES[0], (
        f"The network answers with one {config.heatmap_size}x{config.heatmap_size} map per joint (each "
        f"heatmap pixel covers {scale:g}x{scale:g} input pixels). Training pulls each map towards a small "
        "Gaussian at the true joint; the predicted keypoint is the map's highest point and its height is the "
        "confidence shown after the joint's name. Rows 1 and 3: the predicted map of each joint over the "
        "crop (cyan cross: the decoded keypoint); rows 2 and 4: the training target (white ring: the true "
        "keypoint). The first column draws the whole predicted skeleton (orange: left limbs, blue: right, "
        "green: head and trunk) and the labelled truth. A second bright spot in a predicted map is a second "
        "guess, often the joint's left/right twin."), body)


def _activations_section(crops, stages: dict) -> Section:
    body = []
    for i in range(len(crops)):
        per_sample = {name: maps[i] for name, maps in stages.items()}
        body += [f"<h3>sample {i + 1}</h3>", image(fg.activation_figure(crops[i].numpy(), per_sample),
                                                   f"activations of sample {i + 1}")]
    return Section("activations", SECTION_TITLES[1], (
        "The feature maps the hourglass computes, one row per stage, on the way down and back up: the stem's "
        "output; down i, level i after max-pooling and its first residual (half the resolution each time); "
        "the bottleneck at the lowest resolution; then up i, the output of level i, where the upsampled "
        "coarse features are added to that level's skip branch. The first map of a row is the mean over all "
        "channels, the others are the channels with the largest mean activation on this sample. Each tile is "
        "scaled to its own range, so compare shapes, not brightness between tiles. Early stages respond to "
        "edges and colours; at the bottleneck a few pixels summarise the whole person; on the way up the "
        "maps sharpen into joint-like blobs."), body)


def _branch_section(contributions) -> Section:
    rows = [(f"level {i + 1}", f"{r}x{r}", _fmt(s), _fmt(lo), f"{100 * sh:.0f}%")
            for i, (r, s, lo, sh) in enumerate(zip(contributions.resolution, contributions.skip,
                                                   contributions.low, contributions.skip_share))]
    dominant = int(np.argmax(contributions.low / np.maximum(contributions.skip, 1e-12)))
    return Section("skip-vs-low", SECTION_TITLES[2], (
        "Every level of the hourglass outputs the sum of two branches: the skip branch, a residual at the "
        "level's own resolution, and the low branch, everything computed at coarser resolutions, upsampled. "
        "The bars are the root-mean-square size of each branch's contribution, averaged over "
        f"{contributions.samples} samples: a level dominated by its skip branch mostly passes on detail at "
        "its own scale, one dominated by its low branch relies on context from the coarser levels. Size is "
        "not importance; the lesion study below measures what each branch is worth to the accuracy."), [
        image(fg.branch_figure(contributions), "skip and low branch sizes per level"),
        table(("level", "resolution", "skip RMS", "low RMS", "skip share"), rows),
        paragraph(f"The low branch weighs most, relative to the skip branch, at level {dominant + 1} "
                  f"({contributions.resolution[dominant]}x{contributions.resolution[dominant]}).", "note"),
    ])


def _saliency_section(crops, maps, coords, shares, uniform) -> Section:
    body = []
    for i in range(len(crops)):
        figure = fg.saliency_figure(crops[i].numpy(), maps[i], coords[i], shares[i])
        body += [f"<h3>sample {i + 1}</h3>", image(figure, f"saliency of sample {i + 1}")]
    mean = float(np.nanmean(shares))
    return Section("saliency", SECTION_TITLES[3], (
        "For each joint: the gradient of that joint's heatmap peak with respect to every input pixel (the "
        "largest absolute value over the three colour channels), drawn over the greyed crop, each map scaled "
        "to its own maximum; the cross is the predicted joint. Bright pixels are those whose slightest "
        "change would move the joint's confidence most. The percentage after each name is the share of the "
        f"saliency within {SALIENCY_RADIUS:.0%} of the crop side of the predicted joint; a map spread evenly "
        f"over the crop would put {uniform:.0%} there."), body + [paragraph(
        f"Over these samples and joints {mean:.0%} of the saliency lies that close to the predicted joint, "
        f"{mean / uniform:.1f} times the uniform share.", "note")])


def _occlusion_section(crops, results, input_size: int) -> Section:
    body = []
    for i, (crop, result) in enumerate(zip(crops, results)):
        body += [f"<h3>sample {i + 1}: confidence drop</h3>",
                 image(fg.occlusion_figure(crop.numpy(), result, "confidence_drop"), "confidence drop"),
                 f"<h3>sample {i + 1}: location shift (input pixels)</h3>",
                 image(fg.occlusion_figure(crop.numpy(), result, "shift"), "location shift")]
    if not results:
        body.append(paragraph("No sample was chosen for occlusion maps (--occlusion-samples 0).", "note"))
    patch, stride = an.occlusion_defaults(input_size)
    return Section("occlusion", SECTION_TITLES[4], (
        f"A grey square of {patch}x{patch} input pixels is slid over the crop in steps of {stride} "
        "pixels and the network is run again at every position. Each joint's first map shows how much its "
        "confidence falls when the square covers that spot (red: falls, blue: rises), the second how far "
        "its predicted location moves. Unlike saliency, which asks about infinitesimal changes, this asks "
        "about hiding a whole region, and shows which context a joint needs: a wrist that moves when the "
        "elbow is hidden is found by following the arm."), body)


def _lesion_section(study, n: int) -> Section:
    intact = study.overall[0]
    rows = [(name + (" zeroed" if branch else ""), _fmt(v), "" if not branch else f"{v - intact:+.3f}")
            for name, branch, v in zip(study.names, study.branch, study.overall)]
    worst = int(np.argmin(study.overall[1:])) + 1
    return Section("lesion-study", SECTION_TITLES[5], (
        "Each level's skip branch, then its low branch, is replaced by zeros in turn (the level then outputs "
        f"only the other branch) and the PCK over the {n} samples is measured again, against the intact "
        "model. Zeroing the low branch of level i removes everything coarser than that level; zeroing its "
        "skip branch removes the detail at that resolution. The network was never trained to work without a "
        "branch, so a drop measures how much it relies on that scale, not whether the scale is redundant."), [
        image(fg.lesion_figure(study), "PCK with each branch zeroed"),
        table(("condition", "PCK", "change"), rows),
        paragraph(f"The largest loss: zeroing the {study.branch[worst]} branch of level {study.level[worst]} "
                  f"takes PCK from {intact:.3f} to {study.overall[worst]:.3f}.", "note"),
    ])


def _failures_section(result, data_set: Samples, coords, config, n: int) -> Section:
    tiles = []
    scale = config.input_size / config.heatmap_size
    for position in result.worst:
        crop = data_set.images[position].numpy()
        pred = an.to_input_coords(coords[position], config.input_size, config.heatmap_size)
        truth = an.to_input_coords(data_set.keypoints[position], config.input_size, config.heatmap_size)
        drawn = fg.pose_on_crop(crop, pred, np.ones(len(pred)), truth, data_set.visibility[position],
                                scale=max(1, 256 // config.input_size))
        tiles.append((fg.encode_png(drawn), f"annotation {int(data_set.ann_ids[position])}: mean error "
                                            f"{result.errors[position] * scale:.1f} input px"))
    measured = np.flatnonzero(~np.isnan(result.per_joint))
    if len(measured):
        ranked = measured[np.argsort(result.per_joint[measured], kind="stable")]
        hardest, easiest = ranked[0], ranked[-1]
        verdict = (f"Hardest joint: {KEYPOINT_NAMES[hardest]} ({_fmt(result.per_joint[hardest])}); easiest: "
                   f"{KEYPOINT_NAMES[easiest]} ({_fmt(result.per_joint[easiest])}).")
    else:
        verdict = "None of these samples has a labelled keypoint on its heatmap."
    return Section("failures", SECTION_TITLES[6], (
        f"Per-joint PCK over the {n} samples (the seed's: a keypoint is correct within 0.5 c of the truth, "
        f"c = {config.heatmap_size / 10:g} heatmap pixels; bars coloured by side, the number of "
        "labelled keypoints under each name), then the samples with the largest mean distance between "
        "predicted and labelled keypoints: the predicted skeleton, and the labelled truth as white rings."), [
        image(fg.per_joint_figure(result.per_joint, result.counted), "per-joint PCK"),
        paragraph(verdict, "note"),
        "<h3>worst samples</h3>", gallery(tiles),
    ])
