"""Options shared by several subcommands."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

import yaml

from hgpose.device import resolve_device  # noqa: F401  (re-exported for the command modules)
from hgpose.fileio import UserError
from hgpose.model import ModelConfig

MODEL_HELP = {
    "num_stacks": "hourglasses stacked with intermediate supervision (the seed: 1)",
    "depth": "down/upsamples in each hourglass (the seed: 4)",
    "residuals_per_level": "residual modules between each down- and upsample (the seed: 1)",
    "bottleneck_residuals": "residuals at the lowest resolution, pooling neighbours included (the seed: 3)",
    "features": "channels inside the hourglass (the seed: 256)",
    "num_keypoints": "heatmaps the network outputs (COCO: 17)",
    "input_size": "square input side in pixels; heatmaps are a quarter of it (the seed: 256)",
}


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model (defaults: the seed's single hourglass)")
    group.add_argument("--model-config", type=Path, metavar="YAML",
                       help="YAML file of model fields; flags override it")
    for f in fields(ModelConfig):
        flag = "--" + f.name.replace("_", "-")
        text = f"{MODEL_HELP[f.name]} (default {f.default})"
        group.add_argument(flag, type=int, default=None, metavar="N", help=text)


def model_config_from_args(args: argparse.Namespace) -> ModelConfig:
    values = {}
    if getattr(args, "model_config", None):
        path = args.model_config
        if not path.is_file():
            raise UserError(f"{path}: model config file not found")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"{path}: malformed YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise UserError(f"{path}: expected a mapping of model fields")
        values.update(loaded.get("model", loaded))
    for f in fields(ModelConfig):
        if getattr(args, f.name, None) is not None:
            values[f.name] = getattr(args, f.name)
    try:
        return ModelConfig.from_dict(values)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto",
                        help="torch device: auto (cuda when available, else cpu), cpu, cuda, cuda:1")
