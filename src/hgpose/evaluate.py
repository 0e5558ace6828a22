"""`hgpose evaluate`: run a checkpoint over a split (evaluation.inference) and score its outputs with
PCK (evaluation.pck), COCO keypoint AP (evaluation.coco) and, on detected boxes, the top-down protocol
(evaluation.topdown); the text summary it prints."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from hgpose.data.coco import annotation_path, build_splits, load_split
from hgpose.data.dataset import PersonDataset
from hgpose.data.image_report import first_problems, image_report
from hgpose.data.loader import make_loader
from hgpose.data.person_boxes import describe_skipped, read_detections
from hgpose.data.transforms import frame_to_image
from hgpose.evaluation.coco import COCO_STAT_NAMES, add_coco_stats, coco_results
from hgpose.evaluation.inference import Inference, infer
from hgpose.evaluation.pck import (
    PCK_STYLES,
    PCK_THRESHOLD,
    VISIBILITY_GROUPS,
    keep_flags,
    pck_bearpaw_epoch,
    pck_curve,
    pck_groups,
    seed_normalizer,
)
from hgpose.evaluation.topdown import GROUND_TRUTH_BOXES, ap_analysis, evaluate_detected_boxes, write_error_figures
from hgpose.keypoints import KEYPOINT_NAMES
from hgpose.model.heatmaps import check_decode_method
from hgpose.model.weights import load_model, read_model_config
from hgpose.runtime.device import resolve_device
from hgpose.runtime.files import UserError, atomic_write_json, json_float
from hgpose.runtime.precision import resolve_precision
from hgpose.train.run_dir import checkpoint_run_record


def evaluate_inference(inference: Inference, dataset, thresholds=None, threshold: float = PCK_THRESHOLD,
                       coco: bool = True) -> dict:
    """PCK (all / v2 / v1, per joint), an optional PCK curve, COCO results and COCO keypoint AP.

    `dataset` supplies the crop boxes (to map predictions to image pixels), the heatmap size and the
    PersonIndex (image ids and the annotation file). Returns a JSON-ready dict; the COCO results list
    is under "coco_results" (evaluate_checkpoint writes it to its own file).
    """
    normalizer = seed_normalizer(dataset.heatmap_size)
    groups = pck_groups(inference, normalizer, threshold)
    result = {
        "instances": int(len(inference.indices)),
        "skipped": inference.skipped,
        "loss": json_float(inference.loss),
        "pck": {name: r.to_dict() for name, r in groups.items()},
    }
    if thresholds is not None:
        thresholds = [float(t) for t in thresholds]
        result["pck_curve"] = {"thresholds": thresholds, **{
            name: [json_float(v) for v in pck_curve(inference.coords, inference.gt,
                                                     keep_flags(inference.visibility, flags), normalizer,
                                                     thresholds)]
            for name, flags in VISIBILITY_GROUPS.items()}}
    if inference.bearpaw_batches is not None:
        bearpaw = pck_bearpaw_epoch(inference.bearpaw_batches, inference.bearpaw_batch_sizes)
        result["pck_bearpaw"] = {
            "overall": json_float(bearpaw.overall),
            "per_joint": {n: json_float(v) for n, v in zip(KEYPOINT_NAMES, bearpaw.per_joint)},
            "batches": bearpaw.batches,
        }
    valid = inference.valid
    indices = inference.indices[valid]
    image_points = frame_to_image(inference.coords[valid], dataset.boxes[indices], dataset.heatmap_size)
    image_ids = dataset.index.image_ids[indices]
    result["coco_results"] = coco_results(image_ids, image_points, inference.confidence[valid],
                                          getattr(dataset.index, "category_id", 1))
    if coco:
        add_coco_stats(result, dataset.index, image_ids, ground_truth_images=image_ids)
    return result


def unreadable_images(dataset, inference, limit: int = 5) -> dict:
    """{"images": count, "first": [{"file_name", "problem"}, ...]} for the samples that could not be
    read; the first `limit` images are read again to name their problem (cheap: a handful of files)."""
    positions = inference.indices[~inference.valid]
    named = first_problems(dataset, positions, limit, default="unreadable from the cache")
    return {"images": len(set(dataset.index.image_index[positions].tolist())),
            "first": [{"file_name": name, "problem": problem} for name, problem in named.items()]}


# --- hgpose evaluate -------------------------------------------------------------------------------------


HELD_OUT_SPLITS = ("train", "val")  # the seeded parts of train2017 that training uses


def load_eval_index(data_root, split: str, checkpoint: Path):
    """`split` names an annotation file (val2017, ...) or is "train"/"val": the held-out split of
    training, reproduced from the checkpoint's run config (its train split, val split/fraction, seed)."""
    if split in HELD_OUT_SPLITS:
        run = checkpoint_run_record(checkpoint)
        options = {k: run[k] for k in ("train_split", "val_split", "val_fraction", "seed") if k in run}
        return build_splits(data_root, verbose=False, **options)[split]
    if not annotation_path(data_root, split).is_file() and Path(data_root).is_dir():
        raise UserError(f"--split {split}: no annotation file {annotation_path(data_root, split)} "
                        f"(use a split name with an annotations/person_keypoints_<split>.json, or train/val)")
    return load_split(data_root, split)


def evaluate_checkpoint(checkpoint, data_root, split: str = "val2017", batch_size: int = 32, device="auto",
                        precision: str = "auto", workers: int = 0, out=None, thresholds=None,
                        pck_style: str = "seed", input_size: int | None = None, progress: bool = True,
                        cache="auto", boxes=None, min_box_score: float = 0.0, flip_test: bool = False,
                        decode: str = "quarter", plots: bool = False) -> dict:
    """The library behind `hgpose evaluate`: run a checkpoint over a split and compute every metric.

    Writes the metrics JSON to `out` and the COCO results beside it (<stem>_keypoints.json), both
    atomically. Returns the metrics, with the COCO results list under "coco_results".
    `boxes`: a COCO detection results file; AP is then also computed on those boxes by the top-down
    protocol (hgpose.evaluation.topdown), its results written to <stem>_keypoints_detected.json. flip_test and
    decode apply to every pass; plots draws the error breakdowns beside `out`.
    """
    _check_options(pck_style, batch_size, decode, plots, out)
    checkpoint = Path(checkpoint)
    config = _model_config(checkpoint, input_size)
    device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    precision = resolve_precision(precision, device)  # the result records what actually ran
    index = load_eval_index(data_root, split, checkpoint)
    if len(index) == 0:
        raise UserError(f"{index.annotation_file}: split {split} holds no person instances to evaluate")
    detections = None
    if boxes is not None:  # read before the model runs, with the dataset's person id: a bad file fails at once
        detections = read_detections(boxes, min_box_score, index.category_id, index.annotation_file)
    dataset = PersonDataset(index, input_size=config.input_size, cache=cache)
    model = load_model(checkpoint, device=device)
    loader = make_loader(dataset, batch_size, shuffle=False, workers=workers, device=device)
    inference = infer(model, loader, device=device, precision=precision, bearpaw=pck_style == "bearpaw",
                      progress=progress, desc=f"evaluate {split}", flip_test=flip_test, decode=decode)
    result = {"checkpoint": str(checkpoint), "data": str(data_root), "split": split,
              "annotation_file": str(index.annotation_file), "model": asdict(config), "precision": precision,
              "pck_style": pck_style, **evaluate_inference(inference, dataset, thresholds, coco=False),
              **_image_problems(dataset, inference, progress)}
    if out is not None:  # PCK first: nothing computed so far is lost if COCOeval then fails
        _write_pck_and_results(result, Path(out))
    held_out = split in HELD_OUT_SPLITS  # part of an annotation file: its ground truth holds just those images
    coco = add_coco_stats(result, index, index.image_ids[inference.indices[inference.valid]],
                          ground_truth_images=np.unique(index.image_ids) if held_out else None)
    if coco is not None:
        _add_protocol(result, model, detections, index, config, coco, batch_size=batch_size, device=device,
                      precision=precision, workers=workers, flip_test=flip_test, decode=decode,
                      progress=progress)
    if out is not None:
        _write_the_rest(result, Path(out), detections is not None, plots)
    return result


def _check_options(pck_style: str, batch_size: int, decode: str, plots: bool, out) -> None:
    if pck_style not in PCK_STYLES:
        raise UserError(f"--pck-style must be one of {', '.join(PCK_STYLES)}, got {pck_style!r}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    check_decode_method(decode)
    if plots and out is None:
        raise UserError("--plots writes its figures beside --out FILE.json: give --out")


def _model_config(checkpoint: Path, input_size: int | None):
    """The checkpoint's model config, checked against what evaluation needs."""
    config = read_model_config(checkpoint)
    if input_size is not None and input_size != config.input_size:
        raise UserError(f"{checkpoint}: the model was trained at --input-size {config.input_size}, "
                        f"not {input_size}")
    if config.num_keypoints != len(KEYPOINT_NAMES):
        raise UserError(f"{checkpoint}: the model predicts {config.num_keypoints} keypoints; "
                        f"COCO person keypoints need {len(KEYPOINT_NAMES)}")
    return config


def _image_problems(dataset, inference: Inference, progress: bool) -> dict:
    """The result's "unreadable" (samples skipped) and "size_warnings" entries, when there are any."""
    problems = {}
    if inference.skipped:
        problems["unreadable"] = unreadable_images(dataset, inference)
    size_warnings = image_report(dataset, progress=progress).size_warnings_json()
    if size_warnings:
        problems["size_warnings"] = size_warnings
    return problems


def _metrics_json(result: dict) -> dict:
    return {k: v for k, v in result.items() if not k.endswith("coco_results")}


def _write_pck_and_results(result: dict, out: Path) -> None:
    results_file = out.with_name(f"{out.stem}_keypoints.json")
    result["results_file"] = str(results_file)
    atomic_write_json(results_file, result["coco_results"], indent=None)
    atomic_write_json(out, _metrics_json(result))


def _write_the_rest(result: dict, out: Path, detected: bool, plots: bool) -> None:
    """After COCO AP: the detected boxes' results, the error figures and the whole metrics JSON."""
    if detected:
        detected_file = out.with_name(f"{out.stem}_keypoints_detected.json")
        result["detected_boxes"]["results_file"] = str(detected_file)
        atomic_write_json(detected_file, result["detected_coco_results"], indent=None)
    if plots:
        result["plots"] = [str(p) for p in write_error_figures(result, out)]
    atomic_write_json(out, _metrics_json(result))


def _add_protocol(result: dict, model, detections, index, config, coco, **run) -> None:
    """The top-down protocol's additions: which boxes each AP used, per-keypoint AP and the error
    breakdown on ground-truth boxes, and with detections the whole block on detected boxes. `coco`:
    the ground truth the ground-truth-box AP was scored against (coco_ground_truth)."""
    result["protocol"] = {"flip_test": run["flip_test"], "decode": run["decode"],
                          "pck_boxes": f"{GROUND_TRUTH_BOXES} (PCK is a ground-truth-box metric)"}
    result["coco_boxes"] = GROUND_TRUTH_BOXES
    valid_ids = {r["image_id"] for r in result["coco_results"]}
    result.update(ap_analysis(coco, result["coco_results"], sorted(valid_ids)))
    if detections is not None:
        only_images = np.unique(index.image_ids) if result["split"] in HELD_OUT_SPLITS else None  # part of a file
        block, results = evaluate_detected_boxes(model, detections, index.annotation_file, index.image_dir,
                                                 index.split, coco, input_size=config.input_size,
                                                 only_images=only_images, **run)
        result["detected_boxes"] = block
        result["detected_coco_results"] = results


def headline_pck(result: dict) -> float | None:
    """The PCK a result is summarised by: the seed's, or bearpaw's when that style was asked for."""
    if result.get("pck_style") == "bearpaw" and "pck_bearpaw" in result:
        return result["pck_bearpaw"]["overall"]
    return result["pck"]["all"]["overall"]


def _fmt(x, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def format_evaluation(result: dict) -> str:
    """The printed summary: overall PCK, v=2 / v=1, per-joint PCK, COCO AP stats."""
    pcks = result["pck"]
    normalizer, threshold = pcks["all"]["normalizer"], pcks["all"]["threshold"]
    lines = [
        f"{result.get('split', 'split')}: {result['instances']} instances"
        + (f" ({result['skipped']} unreadable, skipped)" if result.get("skipped") else "")
        + (f", heatmap loss {result['loss']:.3e}" if result.get("loss") is not None else ""),
        f"PCK (c = {normalizer:g} heatmap px, r = {threshold:g}): pooled over keypoints / mean of joints",
    ]
    for name, label in (("all", "all labelled (v=1,2)"), ("v2", "visible (v=2)"), ("v1", "occluded (v=1)")):
        p = pcks[name]
        lines.append(f"  {label:<22}{_fmt(p['overall']):>7} / {_fmt(p['mean_per_joint'])}"
                     f"   ({p['correct']}/{p['counted']})")
    if "pck_bearpaw" in result:
        lines.append(f"  {'bearpaw/pytorch-pose':<22}{_fmt(result['pck_bearpaw']['overall']):>7}"
                     f"   (mean over {result['pck_bearpaw']['batches']} batches of per-joint means)")
    keypoint_aps = _keypoint_ap_columns(result)
    lines.append(f"{'joint':<16}{'all':>7}{'v=2':>7}{'v=1':>7}{'n':>8}"
                 + "".join(f"{title:>10}" for title, _ in keypoint_aps))
    for name in pcks["all"]["per_joint"]:
        lines.append(f"{name:<16}{_fmt(pcks['all']['per_joint'][name]):>7}{_fmt(pcks['v2']['per_joint'][name]):>7}"
                     f"{_fmt(pcks['v1']['per_joint'][name]):>7}{pcks['all']['per_joint_counted'][name]:>8}"
                     + "".join(f"{_fmt(aps.get(name)):>10}" for _, aps in keypoint_aps))
    if keypoint_aps:
        lines.append("  (PCK: ground-truth boxes; " + ", ".join(
            f"{title}: keypoint AP, {label}" for title, label in _keypoint_ap_labels(result)) + ")")
    if "pck_curve" in result:
        curve = result["pck_curve"]
        points = zip(curve["thresholds"], curve["all"])
        lines.append("PCK curve (all): " + "  ".join(f"r={t:g}:{_fmt(v)}" for t, v in points))
    if result.get("coco"):
        lines.append(f"COCO keypoints ({result.get('coco_boxes', 'ground-truth boxes')}): "
                     + "  ".join(f"{name} {_fmt(result['coco'][name])}" for name in COCO_STAT_NAMES))
    if result.get("unreadable"):
        bad = result["unreadable"]
        shown = "; ".join(f"{b['file_name']} ({b['problem']})" for b in bad["first"])
        more = f"; and {bad['images'] - len(bad['first'])} more" if bad["images"] > len(bad["first"]) else ""
        lines.append(f"{bad['images']} unreadable images skipped ({result['skipped']} instances), "
                     f"COCO AP covers the readable ones: {shown}{more}")
    if result.get("size_warnings"):
        warned = result["size_warnings"]
        shown = "; ".join(f"{w['file_name']} ({w['warning']})" for w in warned["first"][:3])
        lines.append(f"{warned['images']} images a pixel off their annotated size, used as decoded "
                     f"({warned['instances']} instances), e.g. {shown}")
    lines += _error_lines(result.get("errors"), result.get("coco_boxes", "ground-truth boxes"))
    detected = result.get("detected_boxes")
    if detected:
        lines.append(f"COCO keypoints ({detected['boxes']}): "
                     + "  ".join(f"{name} {_fmt(detected['coco'][name])}" for name in COCO_STAT_NAMES))
        lines.append(f"  {detected.get('boxes_cropped', detected['boxes_evaluated'])} of "
                     f"{detected['boxes_in_file']} boxes cropped "
                     f"(min box score {detected['min_box_score']:g}), "
                     f"{detected.get('instances_after_nms', 0)} left after {detected['nms']}, "
                     f"on {detected['images_evaluated']} images; score = {detected['rescoring']}")
        lines.append(f"  boxes not cropped: {describe_skipped(detected.get('boxes_skipped', {}))}")
        lines += _error_lines(detected.get("errors"), detected["boxes"])
    return "\n".join(lines)


def _keypoint_ap_labels(result: dict) -> list[tuple[str, str]]:
    labels = []
    if result.get("per_keypoint_ap"):
        labels.append(("AP(gt)", result.get("coco_boxes", "ground-truth boxes")))
    if (result.get("detected_boxes") or {}).get("per_keypoint_ap"):
        labels.append(("AP(det)", result["detected_boxes"]["boxes"]))
    return labels


def _keypoint_ap_columns(result: dict) -> list[tuple[str, dict]]:
    columns = {"AP(gt)": result.get("per_keypoint_ap"),
               "AP(det)": (result.get("detected_boxes") or {}).get("per_keypoint_ap")}
    return [(title, aps) for title, aps in columns.items() if aps]


def _error_lines(errors: dict | None, label: str) -> list[str]:
    if not errors:
        return []
    shares = "  ".join(f"{kind} {_fmt(share)}" for kind, share in errors["overall_fraction"].items())
    fixed = "  ".join(f"{kind} {_fmt(ap)}" for kind, ap in errors["ap_if_fixed"].items())
    return [f"  keypoint errors ({label}): {shares}",
            f"    over {errors['matched_predictions']} predictions matched to a person "
            f"({errors['unmatched_predictions']} unmatched, {errors['unmatched_people']} people without one)",
            f"  AP if fixed: {fixed}  (as is {_fmt(errors['ap'])})"]
