"""`photon-jax params`: parameter breakdown, training FLOPs per token, analytic KV-cache bytes."""

from __future__ import annotations

from photon_jax.cli.common import add_config_args, add_json_flag, config_from_args, print_json
from photon_jax.config import list_presets
from photon_jax.model.accounting import report


def register(subparsers) -> None:
    p = subparsers.add_parser("params", help="parameter counts, FLOPs per token and KV bytes of a config")
    add_config_args(p, default_preset="photon-tiny")
    p.add_argument("--context", type=int, default=0, help="context for KV bytes (default: data.seq_len)")
    p.add_argument("--kv-bytes", type=int, default=2, help="bytes per cached value (2 = bf16)")
    add_json_flag(p, "the report")
    p.add_argument("--list", action="store_true", help="list the presets and exit")
    p.set_defaults(run=run)


def _gib(n: float) -> str:
    return f"{n / 2**30:.4f} GiB"


def run(args) -> int:
    if args.list:
        print("\n".join(list_presets()))
        return 0
    cfg = config_from_args(args)
    context = args.context or cfg.data.seq_len
    if context <= 0:
        from photon_jax.errors import UserError
        raise UserError(f"--context must be > 0, got {context}")
    rep = report(cfg.model, cfg.data.seq_len, context)
    if args.kv_bytes != 2:
        from photon_jax.model.accounting import kv_bytes_per_sample, modes_for
        rep["kv_bytes_per_sample"] = {
            mode: sum(kv_bytes_per_sample(cfg.model, context, mode, args.kv_bytes).values())
            for mode in modes_for(cfg.model)}
    rep["name"] = cfg.name
    if args.json:
        print_json(rep)
        return 0
    total = rep["total_params"]
    print(f"{cfg.name}: {total:,} parameters ({cfg.model.family}, width {cfg.model.width})")
    for name, count in sorted(rep["breakdown"].items()):
        print(f"  {name:<16} {count:>15,}  {100 * count / total:5.1f}%")
    print(f"training FLOPs per token (fwd+bwd, seq {cfg.data.seq_len}): {rep['train_flops_per_token']:.4e}")
    print(f"KV cache per sample at context {context} ({args.kv_bytes} bytes/value):")
    for mode, nbytes in rep["kv_bytes_per_sample"].items():
        print(f"  {mode:<12} {nbytes:>15,} bytes  {_gib(nbytes)}")
    return 0
