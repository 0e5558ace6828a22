from pathlib import Path

from hgpose.cli.common import add_device_argument, check_output_path, require_at_least
from hgpose.model.heatmaps import DECODE_METHODS
from hgpose.runtime.files import UserError
from hgpose.runtime.precision import PRECISIONS

HELP = "evaluate a checkpoint on a split: PCK (overall, v=2 / v=1, per joint) and COCO keypoint AP"
DESCRIPTION = (
    HELP + ". PCK is the seed's: a labelled keypoint (v=1,2) is correct when its distance to the truth is "
    "under 0.5 x (heatmap size / 10) heatmap pixels. --out FILE.json also writes the predictions as a COCO "
    "keypoint results file, FILE_keypoints.json. --split train or val evaluates the held-out split of the "
    "checkpoint's training run."
)


def add_arguments(parser):
    parser.add_argument("--checkpoint", type=Path, required=True, metavar="CKPT", help="model weights (.safetensors)")
    parser.add_argument("--data", type=Path, required=True, help="COCO-style data root")
    parser.add_argument("--split", default="val2017",
                        help="split name (annotations/person_keypoints_<split>.json), or train/val")
    parser.add_argument("--out", type=Path, metavar="FILE.json", help="metrics JSON (results beside)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    add_device_argument(parser)
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="bf16 autocast, fp32, or auto: bf16 where the hardware has it (as training)")
    parser.add_argument("--workers", type=int, default=2, help="data loader worker processes")
    parser.add_argument("--input-size", type=int, default=None,
                        help="expected model input size; an error when the checkpoint's differs")
    parser.add_argument("--pck-style", choices=("seed", "bearpaw"), default="seed",
                        help="seed: pooled over keypoints against the true positions; bearpaw: also "
                             "bearpaw/pytorch-pose's accuracy() (argmax targets, batch means of joint means)")
    parser.add_argument("--pck-curve", action="store_true", help="PCK at r = 0.05, 0.1, ..., 1")
    parser.add_argument("--cache", choices=("auto", "off"), default="auto",
                        help="auto (use a current prepared cache) or off")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    protocol = parser.add_argument_group("COCO top-down protocol")
    protocol.add_argument("--boxes", type=Path, metavar="DETECTIONS.json",
                          help="also compute AP on detected person boxes from a COCO detection results file "
                               "(rescored, OKS-NMS 0.9, COCOeval); results in FILE_keypoints_detected.json")
    protocol.add_argument("--min-box-score", type=float, default=0.0, metavar="F",
                          help="detections below this score are not used (0: every box, as the reference)")
    protocol.add_argument("--flip-test", action="store_true",
                          help="average each crop's heatmaps with its mirror's (flipped back, left/right swapped)")
    protocol.add_argument("--decode", choices=DECODE_METHODS, default="quarter",
                          help="sub-pixel decoding: a quarter pixel toward the larger neighbour, or DARK's Taylor step")
    protocol.add_argument("--plots", action="store_true",
                          help="draw the keypoint error breakdown per joint beside --out (FILE_errors.png)")


def run(args):
    from hgpose.evaluate import evaluate_checkpoint, format_evaluation
    from hgpose.evaluation.pck import DEFAULT_CURVE_THRESHOLDS

    require_at_least(args, 1, "batch_size", "input_size")
    require_at_least(args, 0, "workers")
    check_output_path(args.out, "--out", directory=False)
    result = evaluate_checkpoint(
        args.checkpoint, args.data, split=args.split, batch_size=args.batch_size, device=args.device,
        precision=args.precision, workers=args.workers, out=args.out,
        thresholds=DEFAULT_CURVE_THRESHOLDS if args.pck_curve else None, pck_style=args.pck_style,
        input_size=args.input_size, progress=args.progress, cache=args.cache, boxes=args.boxes,
        min_box_score=args.min_box_score, flip_test=args.flip_test, decode=args.decode, plots=args.plots,
    )
    print(format_evaluation(result))
    if args.out:
        print(f"metrics: {args.out}\nCOCO results: {result['results_file']}")
        if result.get("detected_boxes"):
            print(f"COCO results (detected boxes): {result['detected_boxes']['results_file']}")
        for path in result.get("plots", []):
            print(f"figure: {path}")
    if result.get("coco_error"):  # after the PCK figures, which are printed and written already
        raise UserError(result["coco_error"])
    return 0
