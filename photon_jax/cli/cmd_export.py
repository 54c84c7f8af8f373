"""`photon-jax export`: a trained run's checkpoint as a Hugging Face-style directory (docs/interop.md)."""

from __future__ import annotations

import sys

from photon_jax.cli.common import RUN_OVERRIDES_HELP, add_json_flag, add_overrides, print_json
from photon_jax.errors import UserError


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="write a run's checkpoint as safetensors + config.json (HF format)")
    p.add_argument("--workdir", required=True, help="the training run directory")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--out", required=True, help="a new (or empty) directory to write")
    p.add_argument("--format", default="hf", choices=["hf"],
                   help="hf: vanilla -> LlamaForCausalLM; PHOTON/Block -> safetensors with our names")
    p.add_argument("--max-shard-mb", type=float, default=2048.0,
                   help="split the weights into shards of at most this size, with model.safetensors.index.json")
    add_overrides(p, RUN_OVERRIDES_HELP)
    add_json_flag(p, "what was written")
    p.set_defaults(run=run)


def run(args) -> int:
    from photon_jax.interop.hf import export_run

    if args.max_shard_mb <= 0:
        raise UserError("--max-shard-mb must be > 0")
    out = export_run(args.workdir, args.out, step=args.step, overrides=args.overrides,
                     max_shard_bytes=int(args.max_shard_mb * (1 << 20)))
    if args.json:
        print_json(out)
    else:
        print(f"exported {out['family']} step {out['step']}: {out['tensors']} tensors, {out['bytes'] / 2**20:.1f} MiB "
              f"in {', '.join(out['files'])} -> {out['out']}")
        print(f"tokenizer: {', '.join(out['tokenizer_files'])}")
        if out["tokenizer_files"] == ["tokenizer.model"]:
            print("  (no tokenizer.json: converting the SentencePiece model needs transformers and protobuf)",
                  file=sys.stderr)
    return 0
