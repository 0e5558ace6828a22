import json

from hgpose.cli.common import add_model_arguments, model_config_from_args
from hgpose.model.summary import format_summary, model_summary

HELP = "print the model's stages, parameter count and GFLOP per image"
DESCRIPTION = HELP + ". With no options: the seed's single hourglass (3,426,705 parameters)."


def add_arguments(parser):
    add_model_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args):
    summary = model_summary(model_config_from_args(args))
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
