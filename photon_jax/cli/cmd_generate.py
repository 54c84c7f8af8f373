"""`photon-jax generate`: sample continuations of a prompt from a trained run."""

from __future__ import annotations

import sys

from photon_jax import distributed
from photon_jax.cli.common import add_json_flag, add_run_args, print_json
from photon_jax.errors import UserError
from photon_jax.generation.api import ALL_MODES
from photon_jax.generation.sampling import SamplingConfig
from photon_jax.generation.text import DEFAULT_MAX_NEW_TOKENS

DEFAULTS = SamplingConfig()


def register(subparsers) -> None:
    p = subparsers.add_parser("generate", help="generate text from a trained run")
    add_run_args(p)
    p.add_argument("--prompt", required=True, help="prompt text ('-' reads standard input)")
    p.add_argument("--mode", default=None, choices=ALL_MODES,
                   help="generation mode (default: hiergen for PHOTON, which is exact; vanilla for vanilla models)")
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    p.add_argument("--temperature", type=float, default=DEFAULTS.temperature,
                   help=f"0 = greedy (default {DEFAULTS.temperature:g})")
    p.add_argument("--top-k", type=int, default=DEFAULTS.top_k, help=f"0 = off (default {DEFAULTS.top_k})")
    p.add_argument("--top-p", type=float, default=DEFAULTS.top_p, help=f"1 = off (default {DEFAULTS.top_p:g})")
    p.add_argument("--seed", type=int, default=0)
    add_json_flag(p, "the samples")
    p.set_defaults(run=run)


def run(args) -> int:
    from photon_jax.generation.text import generate_text
    from photon_jax.runs.workdir import load_run

    if args.num_samples < 1 or args.max_new_tokens < 1:
        raise UserError("--num-samples and --max-new-tokens must be >= 1")
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    distributed.initialize_from_args(args)
    loaded = load_run(args.workdir, step=args.step, overrides=args.overrides)
    sampling = SamplingConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    out = generate_text(loaded, prompt, mode=args.mode, num_samples=args.num_samples,
                        max_new_tokens=args.max_new_tokens, sampling=sampling, seed=args.seed)
    if not distributed.is_main_process():
        return 0
    if args.json:
        print_json(out)
        return 0
    for i, sample in enumerate(out["samples"]):
        header = f"--- sample {i + 1} ({out['mode']}, {sample['tokens']} tokens, {sample['finish']})"
        print(f"{header}\n{prompt}{sample['text']}")
    return 0
