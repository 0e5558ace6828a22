from pathlib import Path

from hgpose.cli.common import check_output_path

HELP = "export a checkpoint to ONNX (dynamic batch) and check it against PyTorch with onnxruntime"
DESCRIPTION = (
    HELP + ". The ONNX model takes float32 RGB images (N, 3, S, S) in [0, 1] (uint8 / 255) and returns "
    "heatmaps (N, 17, S/4, S/4). Needs the export extra: pip install hgpose[export]."
)


def add_arguments(parser):
    parser.add_argument("--checkpoint", type=Path, required=True, metavar="CKPT",
                        help="model weights (.safetensors)")
    parser.add_argument("--format", choices=["onnx"], default="onnx", help="export format")
    parser.add_argument("--out", type=Path, default=None, metavar="FILE",
                        help="output file (default: the checkpoint's path with .onnx)")
    parser.add_argument("--opset", type=int, default=18, metavar="N", help="ONNX opset version")


def run(args):
    from hgpose.model.export import TOLERANCE, export_onnx

    check_output_path(args.out, "--out", directory=False)
    result = export_onnx(args.checkpoint, args.out, opset=args.opset)
    print(f"wrote {result.path} (opset {result.opset}, {result.exporter} exporter, dynamic batch)")
    print(f"onnxruntime vs PyTorch on random batches of 2 and 3: max abs difference "
          f"{result.max_abs_diff:.3g} (tolerance {TOLERANCE:g})")
