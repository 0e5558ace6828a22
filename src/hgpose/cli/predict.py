import math
import sys
from pathlib import Path

from hgpose.cli.common import add_device_argument, check_output_path
from hgpose.model.heatmaps import DECODE_METHODS
from hgpose.runtime.device import resolve_device
from hgpose.runtime.files import UserError
from hgpose.runtime.precision import PRECISIONS

HELP = "predict keypoints on images, folders or videos: COCO results JSON and skeleton overlays"
DESCRIPTION = (
    HELP + ". Each person is a box (from --boxes, --box, or the whole image); writes OUT/keypoints.json "
    "(COCO keypoint results, all 17 keypoints with their confidence) and OUT/<name>_pose.jpg per image "
    "(left limbs orange, right limbs blue; keypoints under --min-confidence hidden; each person's box "
    "labelled #index score, its index in keypoints.json, counting from 0). Which pixels a box refers to: "
    "boxes a person wrote (--box, a CSV file) refer to the photo as every viewer shows it, turned upright by "
    "its EXIF orientation; COCO annotation and detection files refer to the stored pixels, as COCO's tools "
    "do. A video file (.mp4, .avi, .mov, ...) is predicted frame by frame: each result carries `frame` (its "
    "index, counting from 0) and OUT/<name>_pose.mp4 is the overlay video. Default settings give the "
    "keypoints `hgpose evaluate` gives on the same image and box."
)

VIDEO_NOTE = "video files: one box per frame from --box, else the whole frame"


def add_arguments(parser):
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                        help=f"image files, image folders or video files ({VIDEO_NOTE})")
    parser.add_argument("--checkpoint", type=Path, required=True, metavar="CKPT",
                        help="model weights (.safetensors)")
    boxes = parser.add_mutually_exclusive_group()
    boxes.add_argument("--boxes", type=Path, metavar="FILE",
                       help="person boxes per image: a COCO annotation file, a COCO detection results file "
                            "(boxes scoring >= --min-box-score; the detector score is kept as box_score; images "
                            "matched by the file names --annotations gives their ids, else by numeric file name, "
                            "sub-folders searched), or a CSV file of file_name,x,y,w,h[,score] rows. A folder PATH "
                            "is the root its file names are relative to (listed images missing there are reported), "
                            "a file is matched by the tail of its path; the file's image ids and person category id "
                            "are used in the results. COCO files refer to stored pixels (an image whose size "
                            "contradicts the file's width/height is skipped); CSV boxes to the upright photo")
    boxes.add_argument("--box", metavar="X,Y,W,H",
                       help="one person box used for every image and video frame, on the upright photo")
    parser.add_argument("--annotations", type=Path, metavar="FILE",
                        help="with a COCO detection results file as --boxes: the dataset's COCO annotation file, "
                             "whose images give each image id its file name (as evaluate reads them)")
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
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="bf16 autocast, fp32, or auto: bf16 where the hardware has it, as evaluate (the same "
                             "default, so both give the same keypoints)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def parse_box(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4 or not all(map(math.isfinite, values)) or values[2] <= 0 or values[3] <= 0:
        raise UserError(f"--box {text}: expected four finite numbers x,y,w,h with w and h > 0")
    return values


SHOWN_LINES = 25  # skipped images or boxes listed one by one at the end; the rest counted


def run(args):
    from hgpose.predict import predict_paths

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not 0 <= args.min_confidence <= 1:
        raise UserError(f"--min-confidence must be between 0 and 1 (a heatmap peak), got {args.min_confidence}")
    check_output_path(args.out, "--out", directory=True)
    summary = predict_paths(
        args.checkpoint, args.paths, boxes_json=args.boxes, box=parse_box(args.box) if args.box else None,
        out=args.out, min_confidence=args.min_confidence, batch_size=args.batch_size,
        device=resolve_device(args.device), overlays=not args.no_overlays, min_box_score=args.min_box_score,
        flip_test=args.flip_test, decode=args.decode, precision=args.precision, annotations=args.annotations,
        progress=args.progress,
    )
    images = summary.images - summary.frames
    seen = f"{images} images" + (f" and {summary.frames} video frames" if summary.frames else "")
    print(f"{summary.people} people in {seen} -> {summary.results}"
          + (f" and {len(summary.overlays)} overlays in {args.out}" if summary.overlays else ""))
    _list("image(s)", summary.skipped)
    _list("person box(es)", summary.skipped_people)
    return 1 if summary.images == 0 else 0


def _list(what: str, skipped: list) -> None:
    if not skipped:
        return
    print(f"skipped {len(skipped)} {what}:", file=sys.stderr)
    for path, reason in skipped[:SHOWN_LINES]:
        print(f"  {path}: {reason}", file=sys.stderr)
    if len(skipped) > SHOWN_LINES:
        print(f"  ... and {len(skipped) - SHOWN_LINES} more", file=sys.stderr)
