"""`photon-jax train`: train a model (default: photon-tiny on the bundled Shakespeare corpus)."""

from __future__ import annotations

import json
from pathlib import Path

from photon_jax.cli.common import add_config_args, config_from_args


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train (resumes automatically from --workdir)")
    add_config_args(p, default_preset="photon-tiny")
    p.add_argument("--workdir", default=None, help="run directory (default: runs/<preset name>)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    p.add_argument("--json", action="store_true", help="print the final summary as JSON")
    p.set_defaults(run=run)


def default_workdir(name: str) -> Path:
    return Path("runs") / name


def run(args) -> int:
    from photon_jax.train.loop import train

    cfg = config_from_args(args)
    summary = train(cfg, args.workdir or default_workdir(cfg.name), quiet=args.quiet)
    if args.json:
        print(json.dumps(summary, indent=2))
    elif summary["validation"]:
        v = summary["validation"]
        print(f"done: step {summary['step']}, validation loss {v['token_loss']:.4f}, ppl {v['perplexity']:.2f}, "
              f"bits/byte {v.get('bits_per_byte', float('nan')):.4f} -> {summary['workdir']}")
    return 0
