"""Evaluation time outside the network, on a split the size of COCO val2017's kept persons.

Builds a COCO-format annotation file in a temporary directory (6,352 kept people on 2,693 images,
plus 4,652 people without keypoints that COCOeval sees and ignores, as in val2017; no images are
needed after inference), makes heatmaps near the ground truth batch by batch, and times each part:
decoding, PCK (all / v2 / v1 and a curve), mapping to image pixels + the COCO results list, and
COCOeval. Then the top-down protocol on detected boxes at the reference detection file's scale
(--boxes, about 100k person boxes on val2017 before any score threshold): predictions for every box
(near a person for a third of them, background for the rest), rescoring, OKS-NMS, COCOeval,
per-keypoint AP and the error analysis. Usage:

    python benchmarks/evaluate.py [--instances 6352] [--images 2693] [--boxes 100000] [--batch-size 32]
                                  [--device auto] [--quick]

--quick runs a tenth of that scale, in seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from pycocotools.coco import COCO

from hgpose.data.coco import load_annotation_file
from hgpose.data.dataset import PersonDataset
from hgpose.data.transforms import frame_to_image
from hgpose.evaluation.coco import coco_keypoint_stats, coco_results
from hgpose.evaluation.inference import Inference
from hgpose.evaluation.pck import DEFAULT_CURVE_THRESHOLDS, pck_curve, pck_groups, seed_normalizer
from hgpose.keypoints import PERSON_CATEGORY
from hgpose.model.heatmaps import decode_heatmaps, render_heatmaps
from hgpose.runtime.device import resolve_device


def write_annotations(path: Path, instances: int, images: int, unlabelled: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    width, height = 640, 480
    image_entries = [{"id": i + 1, "file_name": f"{i + 1:012d}.jpg", "width": width, "height": height}
                     for i in range(images)]
    annotations = []
    owners = np.concatenate([np.arange(images), rng.integers(0, images, instances + unlabelled - images)])
    for k, image in enumerate(owners):
        w, h = rng.uniform(20, 300), rng.uniform(40, 400)
        x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
        labelled = k < instances
        v = rng.choice([0, 1, 2], size=17, p=[0.3, 0.15, 0.55]) if labelled else np.zeros(17)
        if labelled and not v.any():
            v[0] = 2
        points = np.stack([rng.uniform(x, x + w, 17), rng.uniform(y, y + h, 17), v], -1) * (v > 0)[:, None]
        annotations.append({"id": k + 1, "image_id": int(image) + 1, "category_id": 1, "iscrowd": 0,
                            "bbox": [x, y, w, h], "area": w * h * 0.6, "num_keypoints": int((v > 0).sum()),
                            "keypoints": points.reshape(-1).round(2).tolist()})
    path.write_text(json.dumps({"images": image_entries, "annotations": annotations,
                                "categories": [PERSON_CATEGORY]}))


def fake_heatmaps(gt: torch.Tensor, generator: torch.Generator, size: int, noise: torch.Tensor):
    """Gaussians a little off the truth (about 1 px), plus noise: what a decent model outputs."""
    offset = torch.randn(gt.shape, generator=generator).to(gt.device)
    heatmaps, _ = render_heatmaps(gt + offset, torch.full(gt.shape[:2], 2, device=gt.device), size)
    return heatmaps * 0.8 + noise[: len(gt)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=6352)
    parser.add_argument("--images", type=int, default=2693)
    parser.add_argument("--unlabelled", type=int, default=4652, help="people with no keypoints (ignored)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--input-size", type=int, default=256)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--boxes", type=int, default=100_000, help="detected boxes for the protocol part")
    parser.add_argument("--quick", action="store_true", help="a tenth of the scale")
    args = parser.parse_args()
    if args.quick:
        args.instances, args.images, args.unlabelled, args.boxes = (
            max(v // 10, 1) for v in (args.instances, args.images, args.unlabelled, args.boxes))
    device = resolve_device(args.device)
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        annotation_file = Path(tmp) / "person_keypoints_val2017.json"
        write_annotations(annotation_file, args.instances, args.images, args.unlabelled)
        times = {}

        start = time.perf_counter()
        index = load_annotation_file(annotation_file, Path(tmp) / "val2017", "val2017")
        dataset = PersonDataset(index, input_size=args.input_size, cache="off")
        times["index + crop boxes"] = time.perf_counter() - start
        n, size = len(dataset), dataset.heatmap_size
        print(f"{n} kept instances on {len(np.unique(index.image_ids))} images, {size}x{size} heatmaps, "
              f"batches of {args.batch_size}, {device}")

        gt = torch.from_numpy(dataset.keypoints).to(device)
        generator = torch.Generator().manual_seed(0)
        noise = 0.05 * torch.rand(args.batch_size, gt.shape[1], size, size, generator=generator).to(device)
        coords, confidence, decode = [], [], 0.0
        for first in range(0, n, args.batch_size):
            heatmaps = fake_heatmaps(gt[first:first + args.batch_size], generator, size, noise)
            _sync(device)
            start = time.perf_counter()
            c, conf = decode_heatmaps(heatmaps)
            coords.append(c)
            confidence.append(conf)
            _sync(device)
            decode += time.perf_counter() - start
        start = time.perf_counter()
        inference = Inference(indices=np.arange(n), coords=torch.cat(coords).cpu().numpy(),
                              confidence=torch.cat(confidence).cpu().numpy(), gt=dataset.keypoints,
                              visibility=dataset.visibility, valid=np.ones(n, bool), loss=float("nan"),
                              skipped=0)
        times["decode (argmax + quarter shift)"] = decode + time.perf_counter() - start

        start = time.perf_counter()
        normalizer = seed_normalizer(size)
        groups = pck_groups(inference, normalizer)
        pck_curve(inference.coords, inference.gt, inference.visibility, normalizer, DEFAULT_CURVE_THRESHOLDS)
        times["PCK (all, v=2, v=1, per joint, 20-point curve)"] = time.perf_counter() - start

        start = time.perf_counter()
        points = frame_to_image(inference.coords, dataset.boxes, size)
        results = coco_results(index.image_ids, points, inference.confidence)
        times["to image pixels + COCO results list"] = time.perf_counter() - start

        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(annotation_file))
        times["COCO ground truth load"] = time.perf_counter() - start
        start = time.perf_counter()
        stats = coco_keypoint_stats(coco, results, index.image_ids)
        times["COCOeval keypoints (loadRes, evaluate, accumulate)"] = time.perf_counter() - start

        protocol, summary = protocol_times(coco, args.boxes)

    width = max(len(k) for k in (*times, *protocol))
    for name, seconds in times.items():
        print(f"  {name:<{width}}  {seconds:7.3f} s")
    outside = sum(v for k, v in times.items() if k != "index + crop boxes")
    print(f"  {'total after inference':<{width}}  {outside:7.3f} s")
    overall = {name: f"{r.overall:.3f}" for name, r in groups.items()}
    print(f"PCK {overall['all']} (v=2 {overall['v2']}, v=1 {overall['v1']}); "
          f"COCO AP {stats['AP']:.3f}, AR {stats['AR']:.3f}")
    print(f"detected boxes: {summary}")
    for name, seconds in protocol.items():
        print(f"  {name:<{width}}  {seconds:7.3f} s")
    print(f"  {'total after inference':<{width}}  {sum(protocol.values()):7.3f} s")


def protocol_times(coco, boxes: int, seed: int = 0) -> tuple[dict, str]:
    """Time the detected-box protocol after inference on `boxes` synthetic detections."""
    from hgpose.evaluation.errors import analyze_errors, per_keypoint_ap
    from hgpose.evaluation.oks import GroundTruth, oks_nms, rescore

    rng = np.random.default_rng(seed)
    gt = GroundTruth.from_coco(coco)
    image_ids = np.array(sorted(coco.getImgIds()), dtype=np.int64)
    near = rng.random(boxes) < 1 / 3
    owner = rng.integers(0, len(gt.image_ids), boxes)
    det_images = np.where(near, gt.image_ids[owner], rng.choice(image_ids, boxes))
    x, y, w, h = gt.bboxes[owner].T
    inside = np.stack([x[:, None] + rng.random((boxes, 17)) * w[:, None],
                       y[:, None] + rng.random((boxes, 17)) * h[:, None]], -1)
    labelled = gt.keypoints[owner, :, 2:] > 0
    points = np.where(near[:, None, None] & labelled, gt.keypoints[owner, :, :2], inside)
    points = points + rng.normal(0, 1, (boxes, 17, 2)) * np.sqrt(w * h)[:, None, None] * 0.03
    confidence = rng.random((boxes, 17))
    box_scores = np.where(near, rng.uniform(0.3, 1.0, boxes), rng.uniform(0.0, 0.6, boxes))
    times = {}
    start = time.perf_counter()
    scores = rescore(box_scores, confidence)
    times["rescoring (box x mean keypoint confidence > 0.2)"] = time.perf_counter() - start
    start = time.perf_counter()
    keep = oks_nms(det_images, points, scores, w * h)
    times[f"OKS-NMS at 0.9 over {boxes} boxes"] = time.perf_counter() - start
    start = time.perf_counter()
    results = coco_results(det_images[keep], points[keep], confidence[keep])
    for entry, score in zip(results, scores[keep]):
        entry["score"] = float(score)
    stats = coco_keypoint_stats(coco, results, image_ids)
    times["COCO results + COCOeval keypoints"] = time.perf_counter() - start
    keypoints = np.concatenate([points[keep], confidence[keep, :, None]], -1)
    start = time.perf_counter()
    per_keypoint_ap(gt, det_images[keep], keypoints, scores[keep], image_ids)
    times["per-keypoint AP (17 keypoint types)"] = time.perf_counter() - start
    start = time.perf_counter()
    errors = analyze_errors(gt, det_images[keep], keypoints, scores[keep], image_ids).to_dict()
    times["error analysis (classification + AP if fixed x 5)"] = time.perf_counter() - start
    summary = (f"{boxes} boxes on {len(image_ids)} images, {int(keep.sum())} after OKS-NMS; AP {stats['AP']:.3f}, "
               f"AP as recomputed {errors['ap']:.3f}; good {errors['overall_fraction']['good']:.2f}")
    return times, summary


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    main()
