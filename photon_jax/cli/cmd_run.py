"""`photon-jax run`: the embedded default job. Train photon-tiny on the bundled Shakespeare plays,
evaluate it on the held-out plays, and generate from it; prints one results table."""

from __future__ import annotations

import json

from photon_jax.cli.common import add_config_args, config_from_args
from photon_jax.cli.cmd_train import default_workdir

DEFAULT_PROMPT = "ROMEO.\nWhat light is"


def register(subparsers) -> None:
    p = subparsers.add_parser("run", help="the default job: train, evaluate, generate (photon-tiny on Shakespeare)")
    add_config_args(p, default_preset="photon-tiny")
    p.add_argument("--workdir", default=None, help="run directory (default: runs/<preset name>)")
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=run)


def run(args) -> int:
    from photon_jax.cli.cmd_generate import generate_text
    from photon_jax.evaluation_runs import evaluate_run
    from photon_jax.inference import load_run
    from photon_jax.train.loop import train

    cfg = config_from_args(args)
    workdir = args.workdir or default_workdir(cfg.name)
    summary = train(cfg, workdir)
    results = evaluate_run(workdir)
    loaded = load_run(workdir)
    sample = generate_text(loaded, args.prompt, max_new_tokens=args.max_new_tokens, temperature=0.8, top_k=40)
    report = {"train": summary, "eval": results, "sample": sample}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    v = results["validation"]
    print(f"\n== {cfg.name} after {summary['step']} steps ({summary['params']:,} params) ==")
    print(f"held-out plays: token loss {v['token_loss']:.4f}  perplexity {v['perplexity']:.2f}  "
          f"bits/byte {v['bits_per_byte']:.4f}  ({int(v['targets']):,} tokens)")
    print(f"sample ({sample['mode']}, temperature 0.8, top-k 40):\n{args.prompt}{sample['samples'][0]['text']}")
    print(f"\nrun directory: {summary['workdir']} (photon-jax eval / generate --workdir ...)")
    return 0
