import re
import sys
from pathlib import Path

from hgpose.cli.common import check_output_path, require_at_least
from hgpose.runtime.files import UserError

HELP = "generate a synthetic person-keypoint dataset in the COCO 2017 layout"
DESCRIPTION = (
    HELP + ": OUT/annotations/person_keypoints_{train,val}2017.json and JPEGs in OUT/train2017, OUT/val2017."
    " Deterministic for a seed; the defaults are sized for a few minutes of CPU training."
)

MIN_SIDE, MAX_SIDE = 32, 4096


def add_arguments(parser):
    parser.add_argument("out", type=Path, metavar="OUT", help="dataset root to write")
    parser.add_argument("--train-images", type=int, default=800, metavar="N", help="images in train2017")
    parser.add_argument("--val-images", type=int, default=150, metavar="N", help="images in val2017")
    parser.add_argument("--image-size", default="320x240", metavar="WxH", help="image width x height in pixels")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="random seed: same seed, same dataset")


def parse_image_size(text: str) -> tuple[int, int]:
    """'640x480' -> (640, 480); anything else is a one-line UserError."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m:
        raise UserError(f"--image-size: expected WIDTHxHEIGHT such as 640x480, got {text!r}")
    w, h = int(m.group(1)), int(m.group(2))
    if not (MIN_SIDE <= w <= MAX_SIDE and MIN_SIDE <= h <= MAX_SIDE):
        raise UserError(f"--image-size: each side must be between {MIN_SIDE} and {MAX_SIDE} pixels, got {w}x{h}")
    return w, h


def run(args):
    from hgpose.synth import MAX_IMAGES_PER_SPLIT, generate_dataset

    size = parse_image_size(args.image_size)
    for flag, n in (("--train-images", args.train_images), ("--val-images", args.val_images)):
        if not 0 <= n <= MAX_IMAGES_PER_SPLIT:
            raise UserError(f"{flag}: must be between 0 and {MAX_IMAGES_PER_SPLIT}, got {n}")
    require_at_least(args, 0, "seed")
    check_output_path(args.out, "OUT", directory=True)
    stats = generate_dataset(args.out, args.train_images, args.val_images, size, args.seed,
                             progress=sys.stderr.isatty())
    tr, va = stats["train2017"], stats["val2017"]
    print(f"wrote {args.out}: train2017 {tr['images']} images, {tr['people']} people; "
          f"val2017 {va['images']} images, {va['people']} people ({size[0]}x{size[1]}, seed {args.seed}) "
          f"in {stats['seconds']:.1f} s")
