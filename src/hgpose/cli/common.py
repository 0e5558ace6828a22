"""Options shared by several subcommands."""

from __future__ import annotations

import argparse
import difflib
import shutil
import textwrap
from dataclasses import fields
from pathlib import Path

import yaml

from hgpose.model.hourglass import ModelConfig
from hgpose.model.weights import beyond_limits
from hgpose.runtime.device import resolve_device  # noqa: F401  (re-exported for the command modules)
from hgpose.runtime.files import UserError

HELP_WIDTH = 100  # at most, on a wide terminal: longer help lines are hard to read
# metavars by option name, the same in every command (an explicit metavar= still wins)
METAVARS = {"checkpoint": "CKPT", "data": "DIR", "seed": "S"}


class HelpFormatter(argparse.HelpFormatter):
    """Wrapped help that shows a default only when it says something: once, never None or a flag's
    True/False, and not when the help text already states it; metavars N (integers), F (floats), or
    the option's last word (--cache-dir DIR, --train-split SPLIT)."""

    def __init__(self, prog, **kwargs):
        kwargs.setdefault("width", min(shutil.get_terminal_size().columns, HELP_WIDTH) - 2)
        kwargs.setdefault("max_help_position", 28)
        super().__init__(prog, **kwargs)

    # never break a line inside an option name or a word such as Multi-GPU
    def _split_lines(self, text, width):
        return textwrap.wrap(self._whitespace_matcher.sub(" ", text).strip(), width, break_on_hyphens=False)

    def _fill_text(self, text, width, indent):
        return textwrap.fill(self._whitespace_matcher.sub(" ", text).strip(), width, initial_indent=indent,
                             subsequent_indent=indent, break_on_hyphens=False)

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (not action.option_strings or action.nargs == 0 or "(default" in text
                or default is None or default is argparse.SUPPRESS or isinstance(default, bool)):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"

    def _get_default_metavar_for_optional(self, action):
        if action.dest in METAVARS:
            return METAVARS[action.dest]
        if action.type is int:
            return "N"
        if action.type is float:
            return "F"
        return action.dest.rsplit("_", 1)[-1].upper()

MODEL_HELP = {
    "num_stacks": "hourglasses stacked with intermediate supervision",
    "depth": "down/upsamples in each hourglass",
    "residuals_per_level": "residual modules between each down- and upsample",
    "bottleneck_residuals": "residuals at the lowest resolution, pooling neighbours included",
    "features": "channels inside the hourglass",
    "num_keypoints": "heatmaps the network outputs (COCO has 17 keypoints)",
    "input_size": "square input side in pixels; heatmaps are a quarter of it",
}


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model (defaults: the seed's single hourglass)")
    group.add_argument("--model-config", type=Path, metavar="YAML",
                       help="YAML file of model fields; flags override it")
    for f in fields(ModelConfig):
        flag = "--" + f.name.replace("_", "-")
        text = f"{MODEL_HELP[f.name]} (default: {f.default})"
        group.add_argument(flag, type=int, default=None, metavar="N", help=text)


def require_at_least(args: argparse.Namespace, minimum: int, *names: str) -> None:
    """UserError naming the first option under `minimum` (options left at None are not checked)."""
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value < minimum:
            raise UserError(f"--{name.replace('_', '-')} must be >= {minimum}, got {value}")


def check_output_path(path: Path | None, flag: str, directory: bool) -> None:
    """Before any work: UserError when an output file or folder cannot be created where it is asked
    for (the path is a folder where a file is wanted or the reverse, or lies under a file)."""
    if path is None:
        return
    path = Path(path)
    if directory and path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path}: exists and is not a directory")
    if not directory and path.is_dir():
        raise UserError(f"{flag} {path}: is a directory; give a file name")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{flag} {path}: {parent} is a file, not a directory")
            break


def model_config_from_args(args: argparse.Namespace) -> ModelConfig:
    values = {}
    if getattr(args, "model_config", None):
        path = args.model_config
        if not path.is_file():
            raise UserError(f"{path}: model config file not found")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError:
            raise UserError(f"{path}: not a YAML text file (not UTF-8)") from None
        except yaml.YAMLError as exc:
            raise UserError(f"{path}: malformed YAML ({str(exc).splitlines()[0]})") from None
        model = loaded.get("model", loaded) if isinstance(loaded, dict) else None
        if not isinstance(model, dict):
            raise UserError(f"{path}: expected a mapping of model fields")
        values.update(model)
    for f in fields(ModelConfig):
        if getattr(args, f.name, None) is not None:
            values[f.name] = getattr(args, f.name)
    if beyond_limits(values):
        raise UserError(f"model config: {beyond_limits(values)}")
    try:
        return ModelConfig.from_dict(values)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto",
                        help="torch device: auto (cuda when available, else cpu), cpu, cuda, cuda:1")


def unknown_arguments_message(parser: argparse.ArgumentParser, unknown: list[str]) -> str:
    """What a command says about arguments it does not know: the first unknown option and the
    closest valid one (difflib), instead of argparse's top-level usage and a bare list."""
    first = unknown[0]
    if not first.startswith("-") or first == "-":
        return f"unexpected argument {first!r} (see {parser.prog} --help)"
    name = first.split("=", 1)[0]
    options = [o for action in parser._actions for o in action.option_strings if o.startswith("--")]
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}?" if close else f"see {parser.prog} --help"
    return f"unknown option {name}; {hint}"
