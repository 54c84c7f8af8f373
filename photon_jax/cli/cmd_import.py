"""`photon-jax import`: a Hugging Face LLaMA checkpoint (or one of our exports) as a new run (docs/interop.md)."""

from __future__ import annotations

from photon_jax.cli.common import add_json_flag, add_overrides, print_json


def register(subparsers) -> None:
    p = subparsers.add_parser("import", help="make a run (step-0 checkpoint) from a local HF-style checkpoint dir")
    p.add_argument("--hf", required=True,
                   help="a local directory: config.json, *.safetensors, tokenizer.model or tokenizer.json")
    p.add_argument("--out", required=True, help="the new run directory")
    add_overrides(p, " (applied to the imported config, e.g. data.corpus=DIR data.seq_len=512)")
    add_json_flag(p, "what was imported")
    p.set_defaults(run=run)


def run(args) -> int:
    from photon_jax.interop.hf import import_hf

    out = import_hf(args.hf, args.out, overrides=args.overrides)
    if args.json:
        print_json(out)
    else:
        print(f"imported {out['family']} from {out['source']} ({out['tensors']} tensors) -> {out['out']} (step 0); "
              f"evaluate with photon-jax eval --workdir {out['out']}")
    return 0
