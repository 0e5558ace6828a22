"""The flip test against plain inference on one checkpoint, with paired bootstrap intervals.

Runs CKPT over a split with and without the flip test (ground-truth boxes, quarter decoding, the code
path of `hgpose evaluate`) and prints test PCK and COCO keypoint AP for each, and flip - plain with a
95% paired bootstrap interval: the same resampled people (PCK) or images (AP) for both, so the interval
is that of the difference, not of either figure. docs/demo.md quotes its output. Usage:

    python benchmarks/flip_bootstrap.py --checkpoint demo-out/run/best.safetensors --data demo-out/data
        [--split val2017] [--precision auto] [--replicates 200]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from hgpose.data.dataset import PersonDataset
from hgpose.data.loader import make_loader
from hgpose.evaluate import evaluate_inference, load_eval_index
from hgpose.evaluation.inference import infer
from hgpose.evaluation.pck import (
    PCK_THRESHOLD,
    VISIBILITY_GROUPS,
    counted_mask,
    keep_flags,
    normalized_distances,
    seed_normalizer,
)
from hgpose.model.weights import load_model
from hgpose.runtime.precision import resolve_precision


def run(args, flip: bool):
    """Per-person (correct, counted) keypoints and the COCO results of one pass."""
    index = load_eval_index(args.data, args.split, args.checkpoint)
    model = load_model(args.checkpoint)
    dataset = PersonDataset(index, input_size=model.config.input_size)
    loader = make_loader(dataset, 32, shuffle=False, workers=0)
    inference = infer(model, loader, device="cpu", precision=args.precision, progress=False, flip_test=flip)
    distances = normalized_distances(inference.coords, inference.gt, seed_normalizer(dataset.heatmap_size))
    counted = counted_mask(keep_flags(inference.visibility, VISIBILITY_GROUPS["all"]))
    correct = counted & (distances < PCK_THRESHOLD)
    results = evaluate_inference(inference, dataset, coco=False)["coco_results"]
    return correct.sum(1), counted.sum(1), results, index.annotation_file


def ap(ground_truth: dict, results: list, images: np.ndarray) -> float:
    """COCO keypoint AP over `images` (ids, repeats allowed: each copy becomes an image of its own)."""
    by_image_gt, by_image_dt = {}, {}
    for a in ground_truth["annotations"]:
        by_image_gt.setdefault(a["image_id"], []).append(a)
    for r in results:
        by_image_dt.setdefault(r["image_id"], []).append(r)
    gt = {"images": [], "annotations": [], "categories": ground_truth["categories"]}
    dt = []
    for new_id, old in enumerate(images, start=1):
        gt["images"].append({"id": new_id, "width": 1, "height": 1})
        gt["annotations"] += [{**a, "image_id": new_id, "id": len(gt["annotations"]) + k + 1}
                              for k, a in enumerate(by_image_gt.get(int(old), []))]
        dt += [{**r, "image_id": new_id} for r in by_image_dt.get(int(old), [])]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        if not dt:
            return 0.0
        evaluator = COCOeval(coco, coco.loadRes(dt), "keypoints")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[0])


def interval(values) -> str:
    lo, hi = np.percentile(values, [2.5, 97.5])
    return f"[{lo:+.3f}, {hi:+.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="val2017")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--replicates", type=int, default=200)
    args = parser.parse_args()
    args.precision = resolve_precision(args.precision, __import__("torch").device("cpu"))
    (c0, n0, r0, ann_file), (c1, n1, r1, _) = run(args, False), run(args, True)
    ground_truth = json.loads(ann_file.read_text())
    images = np.array(sorted({a["image_id"] for a in ground_truth["annotations"]}))
    rng = np.random.default_rng(0)
    pck_diff, ap_diff = [], []
    for _ in range(args.replicates):
        people = rng.integers(0, len(c0), len(c0))
        pck_diff.append(c1[people].sum() / n1[people].sum() - c0[people].sum() / n0[people].sum())
        sample = rng.choice(images, len(images))
        ap_diff.append(ap(ground_truth, r1, sample) - ap(ground_truth, r0, sample))
    pck0, pck1 = c0.sum() / n0.sum(), c1.sum() / n1.sum()
    ap0, ap1 = ap(ground_truth, r0, images), ap(ground_truth, r1, images)
    print(f"{args.checkpoint}, {args.split}, precision {args.precision}, {len(c0)} people on {len(images)} images, "
          f"{args.replicates} bootstrap replicates")
    print("| | plain | flip test | flip - plain (95% paired bootstrap) |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| test PCK | {pck0:.3f} | {pck1:.3f} | {pck1 - pck0:+.3f} {interval(pck_diff)} |")
    print(f"| AP (ground-truth boxes) | {ap0:.3f} | {ap1:.3f} | {ap1 - ap0:+.3f} {interval(ap_diff)} |")


if __name__ == "__main__":
    main()
