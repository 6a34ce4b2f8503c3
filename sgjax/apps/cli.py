"""The ``sgjax`` command: ``sgjax train | verify | reproduce | bench``.

Each sub-command lives in its own module that exposes two functions,
``add_arguments(parser)`` and ``run(args) -> int``; this file only dispatches, and
imports a sub-command's module (and so JAX) only when that sub-command is asked for,
so that ``sgjax --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from sgjax.infra.jsonio import OutputKeptError  # results kept elsewhere: a message, exit 1

#: sub-command -> (module implementing it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("sgjax.apps.train_command", "train a network with one of the six update rules"),
    "verify": ("theory.cli", "check every formal claim of the paper numerically"),
    "reproduce": ("sgjax.apps.reproduce", "reproduce one of the paper's experiments"),
    "bench": ("sgjax.apps.bench", "benchmark training steps, compile time, memory"),
}


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(
        prog="sgjax",
        description="Synthetic gradients and decoupled neural interfaces in JAX.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers = {}
    for name, (_, help_text) in COMMANDS.items():
        subparsers[name] = sub.add_parser(name, help=help_text, description=help_text)
    return parser, subparsers


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, subparsers = build_parser()
    if not argv or argv[0] not in COMMANDS:
        # Let argparse print help / the "invalid choice" error with the list of commands.
        parser.parse_args(argv if argv else ["--help"])
        return 2
    name = argv[0]
    module_name, _ = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name is not None and module_name.startswith(err.name):
            parser.error(f"sub-command {name!r} is not available in this version of sgjax")
        raise
    module.add_arguments(subparsers[name])
    args = parser.parse_args(argv)
    try:
        return int(module.run(args) or 0)
    except (ValueError, FileNotFoundError, FloatingPointError, OutputKeptError) as err:
        # Bad input and diverging runs are the user's to fix: a message, not a traceback.
        print(f"sgjax {name}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
