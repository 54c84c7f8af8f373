"""`photon-jax run`: the embedded default job. Train photon-tiny on the bundled Shakespeare plays,
evaluate it on the held-out plays, and generate from it; prints one results table."""

from __future__ import annotations

from photon_jax.cli.common import add_config_args, add_json_flag, config_from_args, default_workdir, print_json
from photon_jax.generation.text import DEFAULT_MAX_NEW_TOKENS

DEFAULT_PROMPT = "ROMEO.\nWhat light is"


def register(subparsers) -> None:
    p = subparsers.add_parser("run", help="the default job: train, evaluate, generate (photon-tiny on Shakespeare)")
    add_config_args(p, default_preset="photon-tiny")
    p.add_argument("--workdir", default=None, help="run directory (default: runs/<preset name>)")
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    p.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    add_json_flag(p, "the train summary, evaluation and sample")
    p.set_defaults(run=run, host_allocator=True)  # a train-step loop (photon_jax/host_allocator.py)


def run(args) -> int:
    from photon_jax.eval.evaluate import evaluate_run
    from photon_jax.generation.text import generate_text
    from photon_jax.runs.workdir import load_run
    from photon_jax.train.loop import train

    cfg = config_from_args(args)
    workdir = args.workdir or default_workdir(cfg.name)
    summary = train(cfg, workdir)
    if summary["stopped_by"]:  # SIGTERM: train said what it kept; evaluating is for the rerun
        return 0
    results = evaluate_run(workdir)
    loaded = load_run(workdir)
    sample = generate_text(loaded, args.prompt, max_new_tokens=args.max_new_tokens)
    report = {"train": summary, "eval": results, "sample": sample}
    if args.json:
        print_json(report)
        return 0
    v = results["validation"]
    print(f"\n== {cfg.name} after {summary['step']} steps ({summary['params']:,} params) ==")
    print(f"held-out plays: token loss {v['token_loss']:.4f}  perplexity {v['perplexity']:.2f}  "
          f"bits/byte {v['bits_per_byte']:.4f}  ({int(v['targets']):,} tokens)")
    knobs = sample["sampling"]
    print(f"sample ({sample['mode']}, temperature {knobs['temperature']:g}, top-k {knobs['top_k']}):\n"
          f"{args.prompt}{sample['samples'][0]['text']}")
    print(f"\nrun directory: {summary['workdir']} (photon-jax eval / generate --workdir ...)")
    return 0
