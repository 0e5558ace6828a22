"""The `hgpose` command line: one module per subcommand in this package, each a thin layer over
library functions. A module defines HELP, add_arguments(parser) and run(args)."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from hgpose.cli.common import HelpFormatter, unknown_arguments_message
from hgpose.runtime.allocator import keep_freed_memory
from hgpose.runtime.files import UserError
from hgpose.runtime.version import __version__

# the order `hgpose --help` lists them in; any other module found here is listed after these
ORDER = ["synth", "prepare", "train", "evaluate", "report", "predict", "export", "explore", "summary"]
NOT_COMMANDS = {"common"}


def _command_modules():
    found = {m.name for m in pkgutil.iter_modules(__path__) if m.name not in NOT_COMMANDS}
    names = [n for n in ORDER if n in found] + sorted(found - set(ORDER))
    return [(name, importlib.import_module(f"hgpose.cli.{name}")) for name in names]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hgpose",
        formatter_class=HelpFormatter,
        description="Train, evaluate and explain a stacked-hourglass human pose estimator on COCO keypoints.",
        epilog="Run `hgpose COMMAND --help` for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"hgpose {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in _command_modules():
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=HelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # one line naming the option and the closest valid one, not the top-level usage
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        command = commands.choices[args.command]
        print(f"{command.prog}: error: {unknown_arguments_message(command, unknown)}", file=sys.stderr)
        return 2
    keep_freed_memory()  # every command that runs the network allocates large tensors over and over
    try:
        return int(args._run(args) or 0)
    except UserError as exc:
        print(f"hgpose {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hgpose {args.command}: interrupted", file=sys.stderr)
        return 130
