from pathlib import Path

from hgpose.cli.common import check_output_path
from hgpose.runtime.files import UserError

HELP = "export a checkpoint to ONNX (dynamic batch) and check it against PyTorch with onnxruntime"
DESCRIPTION = (
    HELP + ". By default (--graph keypoints) the ONNX model takes uint8 RGB crops (N, S, S, 3) and returns "
    "keypoints (N, 17, 3): x, y in crop pixels and confidence, decoded as `hgpose predict` decodes, plus the "
    "heatmaps; --graph heatmaps exports the bare network (float32 (N, 3, S, S) in [0, 1] -> heatmaps). "
    "How to make the crop: docs/commands/export.md. Needs the export extra: pip install hgpose[export]."
)


def add_arguments(parser):
    parser.add_argument("--checkpoint", type=Path, required=True, metavar="CKPT",
                        help="model weights (.safetensors)")
    parser.add_argument("--format", choices=["onnx"], default="onnx", help="export format")
    parser.add_argument("--out", type=Path, default=None, metavar="FILE",
                        help="output file (default: the checkpoint's path with .onnx)")
    parser.add_argument("--opset", type=int, default=18, metavar="N", help="ONNX opset version")
    parser.add_argument("--graph", choices=["keypoints", "heatmaps"], default="keypoints",
                        help="keypoints: uint8 crops in, decoded keypoints out (default); heatmaps: the bare network")
    parser.add_argument("--decode", choices=["quarter", "dark"], default="quarter",
                        help="decoding inside the keypoints graph, as `hgpose predict --decode` (default: quarter)")
    parser.add_argument("--flip-test", action="store_true",
                        help="average with the mirrored crop in the keypoints graph, as `hgpose predict --flip-test`")


def run(args):
    if args.graph == "heatmaps" and (args.decode != "quarter" or args.flip_test):
        raise UserError("--decode and --flip-test apply to --graph keypoints; the heatmaps graph has no decoding")
    from hgpose.model.export import TOLERANCE, export_onnx

    check_output_path(args.out, "--out", directory=False)
    result = export_onnx(args.checkpoint, args.out, opset=args.opset, graph=args.graph, decode=args.decode,
                         flip_test=args.flip_test)
    print(f"wrote {result.path} (opset {result.opset}, {result.exporter} exporter, dynamic batch)")
    if result.graph == "keypoints":
        flip = ", flip test" if args.flip_test else ""
        print(f"input 'crop': uint8 RGB (N, S, S, 3); output 'keypoints' (N, 17, 3): x, y in crop pixels and "
              f"confidence ({args.decode} decoding{flip}), and 'heatmaps'")
    print(f"onnxruntime vs PyTorch on random batches of 2 and 3: max abs difference "
          f"{result.max_abs_diff:.3g} (tolerance {TOLERANCE:g})")
