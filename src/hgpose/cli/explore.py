from pathlib import Path

from hgpose.cli.common import add_device_argument, check_output_path, require_at_least
from hgpose.device import resolve_device
from hgpose.fileio import UserError

HELP = "look inside a trained model: a self-contained HTML report of seven analyses"
DESCRIPTION = (
    HELP + " (heatmaps, activations, skip vs low branch, saliency, occlusion sensitivity, lesion study, "
    "where it fails). Writes OUT/index.html (images embedded; open it in any browser) and OUT/explore.json. "
    "The same analyses are functions in hgpose.explore."
)


def add_arguments(parser):
    parser.add_argument("--checkpoint", type=Path, required=True, metavar="CKPT",
                        help="model weights (.safetensors)")
    parser.add_argument("--data", type=Path, required=True, metavar="DIR", help="COCO-format data root")
    parser.add_argument("--split", default="val2017",
                        help="annotation split (annotations/person_keypoints_<split>.json), or train/val: "
                             "the held-out parts of the checkpoint's training run")
    parser.add_argument("--samples", type=int, default=64, metavar="N",
                        help="seeded random person instances of the split to analyse (0: all of them)")
    parser.add_argument("--show", type=int, default=4, metavar="K",
                        help="samples drawn in the per-sample figures")
    parser.add_argument("--occlusion-samples", type=int, default=2, metavar="K",
                        help="of the shown samples, how many get occlusion maps (each re-runs the network "
                             "about 225 times)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the sample choice")
    parser.add_argument("--batch-size", type=int, default=16, metavar="N", help="crops per forward pass")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="output folder (index.html, explore.json)")
    add_device_argument(parser)


def run(args):
    from hgpose.explore.report import write_explore_report

    for name in ("samples", "show", "occlusion_samples"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be >= 0")
    if args.show < 1 or args.batch_size < 1:
        raise UserError("--show and --batch-size must be >= 1")
    require_at_least(args, 0, "seed")
    check_output_path(args.out, "--out", directory=True)
    path = write_explore_report(
        args.checkpoint, args.data, split=args.split, samples=args.samples, out=args.out,
        device=resolve_device(args.device), show=args.show, occlusion_samples=args.occlusion_samples,
        seed=args.seed, batch_size=args.batch_size,
    )
    print(f"wrote {path}")
