from pathlib import Path

from hgpose.cli.common import add_device_argument, check_output_path, require_at_least
from hgpose.runtime.device import resolve_device
from hgpose.runtime.files import UserError

HELP = "look inside a trained model: a self-contained HTML report of its analyses"
DESCRIPTION = (
    HELP + " (heatmaps, what each stack fixes, activations, what each channel detects (network dissection), "
    "linear probes and CKA, where left and right are decided, skip vs low branch, effective receptive fields, "
    "saliency, Integrated Gradients with sanity checks, occlusion, joint dependency, lesion study, calibration, "
    "where it fails; with --run also how they change over training; with --compare two models side by side). Writes "
    "OUT/index.html (images embedded; open it in any browser) and OUT/explore.json. The same analyses are "
    "functions in hgpose.explore."
)


def add_arguments(parser):
    parser.add_argument("--checkpoint", type=Path, metavar="CKPT",
                        help="model weights (.safetensors); with --run, RUN/best.safetensors when not given")
    parser.add_argument("--run", type=Path, metavar="RUN_DIR",
                        help="a training run directory: adds the over-training section from its per-epoch "
                             "checkpoints (RUN/checkpoints/epoch_NNN.safetensors); with --compare, that run's "
                             "history with A and B marked at their epochs")
    parser.add_argument("--every", type=int, default=5, metavar="K",
                        help="with --run: analyse the first, every K-th and the last epoch")
    parser.add_argument("--compare", type=Path, metavar="CKPT_B",
                        help="a second checkpoint B: write a side-by-side comparison of --checkpoint (A) and B "
                             "with differences instead (no occlusion maps)")
    parser.add_argument("--data", type=Path, metavar="DIR",
                        help="COCO-format data root; with --run, the run's data root when not given")
    parser.add_argument("--split", default="val2017",
                        help="annotation split (annotations/person_keypoints_<split>.json), or train/val: "
                             "the held-out parts of the checkpoint's training run")
    parser.add_argument("--samples", type=int, default=64, metavar="N",
                        help="seeded random person instances for skip vs low, lesions and failures (0: all)")
    parser.add_argument("--probe-samples", type=int, default=256, metavar="N",
                        help="instances for the probes, CKA, calibration and over-training sections (0: all)")
    parser.add_argument("--dependency-samples", type=int, default=16, metavar="N",
                        help="instances for the joint-dependency matrix (one forward pass per labelled joint)")
    parser.add_argument("--dissection-samples", type=int, default=64, metavar="N",
                        help="instances for the network dissection (what each channel detects; four forward passes, "
                             "the model's and a randomly initialised twin's)")
    parser.add_argument("--erf-samples", type=int, default=8, metavar="N",
                        help="instances for the effective receptive fields (one backward pass per stage per sample)")
    parser.add_argument("--show", type=int, default=4, metavar="K",
                        help="samples drawn in the per-sample figures")
    parser.add_argument("--occlusion-samples", type=int, default=2, metavar="K",
                        help="of the shown samples, how many get occlusion maps (each re-runs the network "
                             "about 225 times)")
    parser.add_argument("--attribution-samples", type=int, default=2, metavar="K",
                        help="of the shown samples, how many get Integrated Gradients and its checks")
    parser.add_argument("--ig-steps", type=int, default=20, metavar="N",
                        help="integration steps of Integrated Gradients")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the sample choice")
    parser.add_argument("--batch-size", type=int, default=16, metavar="N", help="crops per forward pass")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="output folder (index.html, explore.json)")
    add_device_argument(parser)


def _run_data(run: Path) -> Path:
    from hgpose.train.run_dir import read_run_yaml

    data = read_run_yaml(run).get("data")
    if not data:
        raise UserError(f"{run / 'config.yaml'}: names no data root; pass --data")
    return Path(data)


def run(args):
    for name in ("samples", "show", "occlusion_samples", "probe_samples", "dependency_samples",
                 "attribution_samples", "dissection_samples", "erf_samples"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    for name in ("show", "batch_size", "every", "ig_steps"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    require_at_least(args, 0, "seed")
    if args.run is not None and not args.run.is_dir():
        raise UserError(f"--run {args.run}: not a directory")
    checkpoint = args.checkpoint or (args.run / "best.safetensors" if args.run else None)
    if checkpoint is None:
        raise UserError("give --checkpoint CKPT, or --run RUN_DIR")
    data = args.data or (_run_data(args.run) if args.run else None)
    if data is None:
        raise UserError("give --data DIR (the COCO-format data root)")
    check_output_path(args.out, "--out", directory=True)
    device = resolve_device(args.device)
    common = dict(split=args.split, samples=args.samples, out=args.out, device=device, seed=args.seed,
                  batch_size=args.batch_size, probe_samples=args.probe_samples,
                  dependency_samples=args.dependency_samples, show=args.show,
                  attribution_samples=args.attribution_samples, ig_steps=args.ig_steps, run=args.run,
                  every=args.every, erf_samples=args.erf_samples)
    if args.compare is not None:
        from hgpose.explore.compare import write_compare_report

        path = write_compare_report(checkpoint, args.compare, data, **common)
    else:
        from hgpose.explore.report import write_explore_report

        path = write_explore_report(checkpoint, data, occlusion_samples=args.occlusion_samples,
                                    dissection_samples=args.dissection_samples, **common)
    print(f"wrote {path}")
