import json
from dataclasses import fields
from pathlib import Path

from hgpose.cli.common import add_model_arguments, model_config_from_args
from hgpose.model.hourglass import ModelConfig
from hgpose.model.summary import checkpoint_summary, format_summary, model_summary
from hgpose.runtime.files import UserError

HELP = "print the model's stages, parameter count and GFLOP per image"
DESCRIPTION = (HELP + ". With no options: the seed's single hourglass (3,426,705 parameters); with --checkpoint: "
               "the model a checkpoint holds.")


def add_arguments(parser):
    parser.add_argument("--checkpoint", type=Path, metavar="CKPT",
                        help="summarise the model in this checkpoint (.safetensors): its config and parameters")
    add_model_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args):
    if args.checkpoint is not None:
        given = [f"--{f.name.replace('_', '-')}" for f in fields(ModelConfig) if getattr(args, f.name) is not None]
        if args.model_config is not None or given:
            flags = ", ".join((["--model-config"] if args.model_config is not None else []) + given)
            raise UserError(f"--checkpoint {args.checkpoint}: the model is the checkpoint's; drop {flags}")
        summary = checkpoint_summary(args.checkpoint)
    else:
        summary = model_summary(model_config_from_args(args))
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
