"""The CLI grammar every subcommand shares.

* A command that builds a config (params, prepare, train, run, bench ...) takes --preset or --config
  and dotted `key=value` overrides.
* A command that loads a trained run (eval, generate, export) takes --workdir and --step, the same
  `key=value` overrides (applied to the run's saved config; ones that would change the parameters
  are refused) and, except export (one process), the same multi-process flags as train.
* --json always means: stdout holds exactly one JSON document, the command's result, instead of
  its table; everything else the command prints (progress, logs) goes to stderr. Files are written
  only where a flag names them (bench --json-file / --plot).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
from pathlib import Path

from photon_jax import distributed
from photon_jax.config import Config, MeshConfig, from_dict, load_config
from photon_jax.errors import UserError

RUNS_DIR = Path("runs")


def add_config_args(parser: argparse.ArgumentParser, default_preset: str | None = None) -> None:
    parser.add_argument("--preset", default=None,
                        help=f"a preset (photon-jax params --list) (default: {default_preset or 'none'})")
    parser.add_argument("--config", default=None, help="a YAML config file")
    add_overrides(parser)
    parser.set_defaults(default_preset=default_preset)


def add_overrides(parser: argparse.ArgumentParser, what: str = "") -> None:
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted config overrides, e.g. model.width=256 model.levels.0.chunk=2" + what)


def config_from_args(args: argparse.Namespace) -> Config:
    preset = args.preset
    if preset is None and args.config is None:
        preset = args.default_preset
    return load_config(preset=preset, path=args.config, overrides=args.overrides)


def default_workdir(name: str) -> Path:
    """Where train, prepare and run put a run of the config named `name` unless --workdir says."""
    return RUNS_DIR / name


RUN_OVERRIDES_HELP = (" (applied to the run's saved config; mesh.*, train.*, data.*, model.dtype, model.remat, "
                      "model.attention_impl, model.scan_unroll)")


def add_run_args(parser: argparse.ArgumentParser) -> None:
    """--workdir, --step, overrides and the multi-process flags of a command that loads a trained run."""
    parser.add_argument("--workdir", required=True, help="the training run directory")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    add_overrides(parser, RUN_OVERRIDES_HELP)
    distributed.add_arguments(parser)


MESH_HELP = "e.g. data=1,fsdp=4,tensor=2; an axis left out is 1"


def add_mesh_flag(parser: argparse.ArgumentParser, default: str) -> None:
    """--mesh, one grammar for train, eval and serve (parse_mesh)."""
    parser.add_argument("--mesh", default=None, help=f"{MESH_HELP} (default: {default})")


def parse_mesh(text: str | None) -> MeshConfig | None:
    """`data=N,fsdp=N,tensor=N` -> a MeshConfig with the default logical rules; None stays None."""
    if text is None:
        return None
    values = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        if key not in ("data", "fsdp", "tensor") or not value.lstrip("-").isdigit():
            raise UserError(f"--mesh {text!r}: expected data=N,fsdp=N,tensor=N")
        values[key] = int(value)
    return from_dict(MeshConfig, {"data": 1, "fsdp": 1, "tensor": 1, **values}, "mesh")


def with_mesh(cfg: Config, text: str | None) -> Config:
    """cfg with --mesh's axis sizes (its logical rules kept); unchanged without --mesh."""
    mesh = parse_mesh(text)
    return cfg if mesh is None else dataclasses.replace(cfg, mesh=dataclasses.replace(mesh, rules=cfg.mesh.rules))


def add_json_flag(parser: argparse.ArgumentParser, what: str = "the result") -> None:
    parser.add_argument("--json", action="store_true", help=f"print {what} as JSON on stdout instead of a table")


_json_stream = None  # while a --json command runs: the real stdout (sys.stdout then points to stderr)


@contextlib.contextmanager
def json_output():
    """Run a --json command: its other prints go to stderr, print_json to the real stdout."""
    global _json_stream
    _json_stream = sys.stdout
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        _json_stream = None


def print_json(data) -> None:
    print(json.dumps(data, indent=2), file=_json_stream or sys.stdout, flush=True)
