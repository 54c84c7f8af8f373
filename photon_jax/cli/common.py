"""Arguments shared by subcommands: config selection and overrides."""

from __future__ import annotations

import argparse

from photon_jax.config import Config, load_config


def add_config_args(parser: argparse.ArgumentParser, default_preset: str | None = None) -> None:
    parser.add_argument("--preset", default=None,
                        help=f"a preset under experiments/configs (default: {default_preset or 'none'})")
    parser.add_argument("--config", default=None, help="a YAML config file")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides, e.g. model.width=256 model.levels.0.chunk=2")
    parser.set_defaults(default_preset=default_preset)


def config_from_args(args: argparse.Namespace) -> Config:
    preset = args.preset
    if preset is None and args.config is None:
        preset = args.default_preset
    return load_config(preset=preset, path=args.config, overrides=args.overrides)
