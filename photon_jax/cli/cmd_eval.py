"""`photon-jax eval`: loss, perplexity and bits per byte of a trained run; multiple-choice accuracy."""

from __future__ import annotations

import json

from photon_jax import distributed
from photon_jax.cli.common import add_json_flag, add_run_args, print_json
from photon_jax.errors import UserError


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="evaluate a checkpoint (held-out split, a text file, or choices)")
    add_run_args(p)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--text", default=None, help="a UTF-8 text file to score")
    src.add_argument("--data", default=None, help="a prepared data dir (same tokenizer) to score")
    p.add_argument("--split", default="validation", choices=["train", "validation"])
    p.add_argument("--choices", default=None, help="JSONL of {context, choices, answer} to score")
    p.add_argument("--max-batches", type=int, default=0, help="0 = the whole split")
    p.add_argument("--batch-size", type=int, default=0, help="0 = train.batch_size")
    p.add_argument("--recgen-agreement", action="store_true",
                   help="greedy-token agreement and KL of recgen (and exact-local) vs exact hiergen")
    p.add_argument("--agreement-windows", type=int, default=8, help="held-out windows for --recgen-agreement")
    p.add_argument("--mesh", default=None,
                   help="e.g. data=1,fsdp=4,tensor=2 (default: the saved mesh; same as mesh.* overrides)")
    add_json_flag(p, "the results")
    p.set_defaults(run=run)


def parse_mesh(text: str | None):
    if text is None:
        return None
    from photon_jax.config import MeshConfig, from_dict

    values = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        if key not in ("data", "fsdp", "tensor") or not value.lstrip("-").isdigit():
            raise UserError(f"--mesh {text!r}: expected data=N,fsdp=N,tensor=N")
        values[key] = int(value)
    return from_dict(MeshConfig, {"data": 1, "fsdp": 1, "tensor": 1, **values}, "mesh")


def run(args) -> int:
    from photon_jax.eval.evaluate import evaluate_run

    distributed.initialize_from_args(args)  # multi-process eval: flags or PHOTON_* / SLURM (launch/README.md)

    if args.max_batches < 0 or args.batch_size < 0:
        raise UserError("--max-batches and --batch-size must be >= 0")
    results = evaluate_run(args.workdir, step=args.step, text=args.text, data=args.data, split=args.split,
                           choices=args.choices, max_batches=args.max_batches or None,
                           batch_size=args.batch_size or None, mesh_cfg=parse_mesh(args.mesh),
                           agreement_windows=args.agreement_windows if args.recgen_agreement else 0,
                           overrides=args.overrides)
    if not distributed.is_main_process():
        return 0
    if args.json:
        print_json(results)
        return 0
    for name, value in results.items():
        if name == "agreement":
            print(f"{name}: " + json.dumps(value))
        elif isinstance(value, dict):
            print(f"{name}: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in value.items()))
        else:
            print(f"{name}: {value}")
    return 0
