"""`photon-jax generate`: sample continuations of a prompt from a trained run."""

from __future__ import annotations

import json
import sys

from photon_jax.errors import UserError


def register(subparsers) -> None:
    p = subparsers.add_parser("generate", help="generate text from a trained run")
    p.add_argument("--workdir", required=True)
    p.add_argument("--step", type=int, default=None)
    p.add_argument("--prompt", required=True, help="prompt text ('-' reads standard input)")
    p.add_argument("--mode", default=None, help="hiergen | recgen | exact-local | vanilla (default: exact)")
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=run)


def generate_text(loaded, prompt: str, *, mode=None, num_samples=1, max_new_tokens=64, temperature=0.8,
                  top_k=0, top_p=1.0, seed=0) -> dict:
    from photon_jax.generation import SamplingConfig, generate

    tok = loaded.tokenizer
    if not prompt:
        raise UserError("prompt is empty: give at least one character of text")
    ids = tok.encode(prompt)
    if not ids:
        raise UserError("prompt encodes to no tokens")
    sampling = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p)
    result = generate(loaded.cfg.model, loaded.params, [ids], mode=mode, max_new_tokens=max_new_tokens,
                      sampling=sampling, eos_id=tok.eos_id, seed=seed, num_samples=num_samples,
                      max_context=None)
    samples = []
    for tokens, reason in zip(result.tokens[0], result.finish_reasons[0]):
        body = [t for t in tokens if t != tok.eos_id]
        samples.append({"text": tok.decode(body), "tokens": len(tokens), "finish": reason})
    return {"prompt": prompt, "prompt_tokens": len(ids), "mode": result.mode, "samples": samples,
            "timings": result.timings}


def run(args) -> int:
    from photon_jax.inference import load_run

    if args.num_samples < 1 or args.max_new_tokens < 1:
        raise UserError("--num-samples and --max-new-tokens must be >= 1")
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    loaded = load_run(args.workdir, step=args.step)
    out = generate_text(loaded, prompt, mode=args.mode, num_samples=args.num_samples,
                        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                        top_p=args.top_p, seed=args.seed)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for i, sample in enumerate(out["samples"]):
        header = f"--- sample {i + 1} ({out['mode']}, {sample['tokens']} tokens, {sample['finish']})"
        print(f"{header}\n{prompt}{sample['text']}")
    return 0
