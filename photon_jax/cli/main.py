"""The `photon-jax` command. Each subcommand lives in photon_jax/cli/cmd_<name>.py and exposes
`register(subparsers)` (adds its parser and sets `run`) ; this file only discovers and dispatches.

Bad input raises UserError anywhere below: it is printed as one line and the exit code is 2.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from photon_jax import host_allocator
from photon_jax.cli.common import json_output
from photon_jax.errors import UserError

COMMAND_ORDER = ["params", "prepare", "train", "eval", "generate", "serve", "bench", "run", "sweep", "export", "import"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other bad input
        raise UserError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="photon-jax", description="PHOTON hierarchical language models in JAX.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    import photon_jax.cli as cli_pkg

    names = [m.name[4:] for m in pkgutil.iter_modules(cli_pkg.__path__) if m.name.startswith("cmd_")]
    names.sort(key=lambda n: (COMMAND_ORDER.index(n) if n in COMMAND_ORDER else len(COMMAND_ORDER), n))
    for name in names:
        importlib.import_module(f"photon_jax.cli.cmd_{name}").register(subparsers)
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
