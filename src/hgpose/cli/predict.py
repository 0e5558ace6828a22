import math
import sys
from pathlib import Path

from hgpose.cli.common import add_device_argument, check_output_path
from hgpose.model.heatmaps import DECODE_METHODS
from hgpose.runtime.device import resolve_device
from hgpose.runtime.files import UserError

HELP = "predict keypoints on images or folders: COCO results JSON and skeleton overlays"
DESCRIPTION = (
    HELP + ". Each person is a box (from --boxes, --box, or the whole image); writes OUT/keypoints.json "
    "(COCO keypoint results, all 17 keypoints with their confidence) and OUT/<stem>_pose.jpg per image "
    "(left limbs orange, right limbs blue; keypoints under --min-confidence hidden; each person's box "
    "labelled #index score, its index in keypoints.json). Photos are turned upright by their EXIF "
    "orientation, except with --boxes (COCO annotations refer to stored pixels)."
)


NO_BOXES = "no person boxes given"


def add_arguments(parser):
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image files or image folders")
    parser.add_argument("--checkpoint", type=Path, required=True, metavar="CKPT",
                        help="model weights (.safetensors)")
    boxes = parser.add_mutually_exclusive_group()
    boxes.add_argument("--boxes", type=Path, metavar="FILE",
                       help="person boxes per image: a COCO annotation file, a COCO detection results file "
                            "(boxes scoring >= --min-box-score; the detector score is kept as box_score; images "
                            "matched by numeric file name), or a CSV file of file_name,x,y,w,h[,score] rows. A "
                            "folder PATH is the root its file names are relative to, a file is matched by the "
                            "tail of its path; the file's image ids and person category id are used in the "
                            "results, its pixels taken as stored")
    boxes.add_argument("--box", metavar="X,Y,W,H", help="one person box used for every image")
    parser.add_argument("--min-box-score", type=float, default=0.0, metavar="F",
                        help="with a COCO detection results file as --boxes: boxes scoring below F are not used")
    parser.add_argument("--out", type=Path, default=Path("predictions"), metavar="DIR", help="output folder")
    parser.add_argument("--min-confidence", type=float, default=0.2, metavar="F",
                        help="keypoints below this heatmap peak are not drawn (the JSON keeps them all)")
    parser.add_argument("--batch-size", type=int, default=32, metavar="N", help="person crops per pass")
    parser.add_argument("--no-overlays", action="store_true", help="write only keypoints.json")
    parser.add_argument("--flip-test", action="store_true",
                        help="average each crop's heatmaps with its mirror's (flipped back, left/right swapped), "
                             "as evaluate --flip-test")
    parser.add_argument("--decode", choices=DECODE_METHODS, default="quarter",
                        help="sub-pixel decoding: a quarter pixel toward the larger neighbour, or DARK's Taylor step")
    add_device_argument(parser)


def parse_box(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4 or not all(map(math.isfinite, values)) or values[2] <= 0 or values[3] <= 0:
        raise UserError(f"--box {text}: expected four finite numbers x,y,w,h with w and h > 0")
    return values


def run(args):
    from hgpose.predict import predict_paths

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not 0 <= args.min_confidence <= 1:
        raise UserError(f"--min-confidence must be between 0 and 1 (a heatmap peak), got {args.min_confidence}")
    check_output_path(args.out, "--out", directory=True)
    if args.boxes is None and args.box is None:
        print(f"{NO_BOXES}: each whole image is treated as one person; for images with several people pass "
              "--boxes FILE (a COCO annotation file, or a CSV of file_name,x,y,w,h rows) or --box X,Y,W,H",
              file=sys.stderr)
    summary = predict_paths(
        args.checkpoint, args.paths, boxes_json=args.boxes, box=parse_box(args.box) if args.box else None,
        out=args.out, min_confidence=args.min_confidence, batch_size=args.batch_size,
        device=resolve_device(args.device), overlays=not args.no_overlays, min_box_score=args.min_box_score,
        flip_test=args.flip_test, decode=args.decode,
    )
    print(f"{summary.people} people in {summary.images} images -> {summary.results}"
          + (f" and {len(summary.overlays)} overlays in {args.out}" if summary.overlays else ""))
    if summary.skipped:
        print(f"skipped {len(summary.skipped)} image(s):", file=sys.stderr)
        for path, reason in summary.skipped:
            print(f"  {path}: {reason}", file=sys.stderr)
    if summary.skipped_people:
        print(f"skipped {len(summary.skipped_people)} person box(es):", file=sys.stderr)
        for path, reason in summary.skipped_people:
            print(f"  {path}: {reason}", file=sys.stderr)
    return 1 if summary.images == 0 else 0
