"""`hgpose explore`: run every analysis of hgpose.explore on samples of a split and write one
self-contained static HTML page (OUT/index.html, figures embedded as PNG data URIs) plus the numbers
behind it (OUT/explore.json). With a run directory it adds how the analyses change over training; with a
second checkpoint (hgpose.explore.compare) it compares two models."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hgpose.data.dataset import PersonDataset
from hgpose.data.image_report import image_report
from hgpose.data.loader import make_loader
from hgpose.evaluate import evaluate_checkpoint, headline_pck, load_eval_index
from hgpose.evaluation.pck import seed_normalizer
from hgpose.explore.html import esc, page, paragraph, table
from hgpose.explore.sections import SECTION_TITLES, fmt
from hgpose.explore.steps import Analysis, run_steps, step_count
from hgpose.explore.trajectory import epoch_checkpoints
from hgpose.keypoints import KEYPOINT_NAMES
from hgpose.model.hourglass import HourglassNet, count_parameters
from hgpose.model.weights import load_model
from hgpose.runtime.files import UserError, atomic_write_json, atomic_write_text
from hgpose.runtime.progress import progress_bar

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


def shown_samples(samples: Samples, count: int) -> np.ndarray:
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
    started = time.perf_counter()
    device = torch.device(device)
    model = load_explore_model(checkpoint, device)
    out = Path(out)
    largest = 0 if 0 in (samples, probe_samples, dissection_samples) else max(
        samples, probe_samples, dependency_samples, dissection_samples, erf_samples)
    if run is not None:
        epoch_checkpoints(run)  # a bad --run is one clean line, before any work
    # before the progress bar, so that a bad --data or --split is one clean line
    loaded = load_samples(data, split, model.config.input_size, largest, seed, _checkpoint_path(checkpoint))
    steps = step_count(run) + 1  # every analysis step, + writing
    bar = progress_bar(total=steps, desc="explore", unit="step", disable=not progress, dynamic_ncols=True)
    try:
        options = dict(samples=samples, show=show, occlusion_samples=occlusion_samples,
                       probe_samples=probe_samples, dependency_samples=dependency_samples,
                       attribution_samples=attribution_samples, ig_steps=ig_steps, run=run, every=every,
                       batch_size=batch_size, seed=seed, dissection_samples=dissection_samples,
                       erf_samples=erf_samples)
        page_sections, numbers = analyse(model, loaded, bar, device=device,
                                         checkpoint=_checkpoint_path(checkpoint), **options)
        full = _full_split_pck(checkpoint, data, split, loaded, numbers["pck"]["overall"], device, batch_size,
                               full_split)
        bar.set_description("explore: write")
        seconds = time.perf_counter() - started
        header = _header(checkpoint, data, split, loaded, model, numbers, full, seconds, options)
        html_path = atomic_write_text(out / "index.html", page("Inside the hourglass", header, page_sections))
        summary = {"checkpoint": str(_checkpoint_path(checkpoint)), "data": str(data), "split": split,
                   "samples": len(loaded.first(samples)), "loaded_samples": len(loaded),
                   "split_pck": full, "seconds": round(seconds, 1), **numbers}
        atomic_write_json(out / "explore.json", jsonable(summary))
        bar.update()
        return html_path
    finally:
        bar.close()


def _checkpoint_path(checkpoint):
    """The checkpoint's path, or None for an in-memory model."""
    return None if isinstance(checkpoint, HourglassNet) else checkpoint


def jsonable(value):
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
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
    """Every section of the report, in order (explore.steps.STEPS), and the numbers behind them."""
    main = loaded.first(samples)
    analysis = Analysis(
        model=model, loaded=loaded, main=main, probe_set=loaded.first(probe_samples), shown=shown_samples(main, show),
        normalizer=seed_normalizer(model.config.heatmap_size), timer=_Timer(bar), device=device,
        batch_size=batch_size, seed=seed, occlusion_samples=occlusion_samples, dependency_samples=dependency_samples,
        attribution_samples=attribution_samples, ig_steps=ig_steps, dissection_samples=dissection_samples,
        erf_samples=erf_samples, run=run, every=every, checkpoint=checkpoint)
    return run_steps(analysis), analysis.numbers


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
