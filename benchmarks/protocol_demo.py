"""The flip-test / decoding table of docs/protocol.md on the demo: the same model evaluated four ways.

After `make demo`, evaluates demo-out/run/best.safetensors on val2017 with quarter or DARK decoding
and the flip test off or on, each time on ground-truth boxes and on the demo's jittered detection file
(hgpose.data.person_boxes.demo_detections, written if absent), and prints a markdown table of PCK, AP on each
box source and the wall time of each evaluation. Usage:

    python benchmarks/protocol_demo.py [--demo-out demo-out] [--precision auto] [--device auto]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from hgpose.data.person_boxes import demo_detections
from hgpose.evaluate import evaluate_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-out", type=Path, default=Path("demo-out"))
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    data, checkpoint = args.demo_out / "data", args.demo_out / "run" / "best.safetensors"
    if not checkpoint.is_file():
        raise SystemExit(f"{checkpoint}: not found; run `make demo` first")
    boxes = demo_detections(data)
    print(f"{checkpoint}, val2017, detected boxes from {boxes}")
    print("| decoding | flip test | PCK (ground-truth boxes) | AP (ground-truth boxes) "
          "| AP (detected boxes: the demo's jittered file) | evaluate wall time |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for decode in ("quarter", "dark"):
        for flip in (False, True):
            start = time.perf_counter()
            result = evaluate_checkpoint(checkpoint, data, split="val2017", device=args.device,
                                         precision=args.precision, progress=False, boxes=boxes, flip_test=flip,
                                         decode=decode)
            seconds = time.perf_counter() - start
            pck = result["pck"]["all"]["overall"]
            ap_gt, ap_det = result["coco"]["AP"], result["detected_boxes"]["coco"]["AP"]
            print(f"| {decode} | {'on' if flip else 'off'} | {pck:.3f} | {ap_gt:.3f} | {ap_det:.3f} "
                  f"| {seconds:.1f} s |")


if __name__ == "__main__":
    main()
