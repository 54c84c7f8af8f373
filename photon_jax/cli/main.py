"""The `photon-jax` command. Each subcommand lives in photon_jax/cli/cmd_<name>.py and exposes
`register(subparsers)` (adds its parser and sets `run`); COMMANDS lists them in the order `--help`
shows, and this file only registers and dispatches. A command module imports its heavy dependencies
inside `run`, so importing all of them here keeps `photon-jax --help` fast.

Bad input raises UserError anywhere below: it is printed as one line and the exit code is 2.
"""

from __future__ import annotations

import argparse
import sys

from photon_jax import host_allocator
from photon_jax.cli import (
    cmd_bench,
    cmd_eval,
    cmd_export,
    cmd_generate,
    cmd_import,
    cmd_params,
    cmd_prepare,
    cmd_run,
    cmd_serve,
    cmd_sweep,
    cmd_train,
)
from photon_jax.cli.common import json_output
from photon_jax.errors import UserError

# the pipeline's order: what a model needs first comes first (tests/test_cli_registry.py: every cmd_*.py is here)
COMMANDS = [cmd_params, cmd_prepare, cmd_train, cmd_eval, cmd_generate, cmd_serve, cmd_bench, cmd_run, cmd_sweep,
            cmd_export, cmd_import]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other bad input
        raise UserError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="photon-jax", description="PHOTON hierarchical language models in JAX.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if getattr(args, "host_allocator", False):  # commands whose hot loop is train steps; before JAX starts
            host_allocator.configure()
        if getattr(args, "json", None) is True:  # one JSON document on stdout (cli/common.py)
            with json_output():
                return int(args.run(args) or 0)
        return int(args.run(args) or 0)
    except UserError as e:
        print(f"photon-jax: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("photon-jax: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
