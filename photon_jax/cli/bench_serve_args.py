"""`photon-jax bench serve`: its parser and command (photon_jax/bench/serve_load.py); cmd_bench.py adds it."""

from __future__ import annotations

import argparse

from photon_jax.cli.common import add_json_flag, print_json
from photon_jax.errors import UserError

DEFAULT_MODELS = "photon-tiny,vanilla-tiny"


def add_serve_parser(sub) -> None:
    s = sub.add_parser("serve", help="open-loop Poisson load against one `photon-jax serve` process per model, "
                                     "the servers measured in turn")
    s.add_argument("--models", default=DEFAULT_MODELS, help=f"presets, random weights (default {DEFAULT_MODELS})")
    s.add_argument("--modes", default="hiergen,recgen",
                   help="PHOTON modes, one server each (default hiergen,recgen); vanilla models run vanilla")
    s.add_argument("--kv-budget-gib", type=float, default=0.016, help="the same for every server (default 0.016)")
    s.add_argument("--max-context", type=int, default=512, help="slot capacity of every server (default 512)")
    s.add_argument("--rate", default="2,8,32", help="offered loads in requests/s, comma-separated (default 2,8,32)")
    s.add_argument("--requests", type=int, default=64, help="requests per rate (default 64)")
    s.add_argument("--prompt-len", type=int, default=32, help="prompt tokens of every request (default 32)")
    s.add_argument("--max-tokens", type=int, default=64, help="tokens every request is forced to (default 64)")
    s.add_argument("--duration", type=float, default=600, help="seconds one rate may run at most (default 600)")
    s.add_argument("--rounds", type=int, default=1,
                   help="times every (model, rate) is measured, interleaved; the median is reported (default 1)")
    s.add_argument("--seed", type=int, default=0, help="arrival times and prompts (default 0; round r uses seed + r)")
    s.add_argument("--no-align", action="store_true", help="servers admit at any phase (serve --no-align)")
    s.add_argument("--stagger-slots", default=None, metavar="N,N",
                   help="instead of the load: decode-step time of N busy slots at one phase of the meta-context vs "
                        "spread over all phases, per PHOTON mode (what aligned admission saves)")
    add_json_flag(s, "the whole result")
    s.add_argument("--json-file", default=None, metavar="FILE", help="also write the result as JSON to FILE")
    s.add_argument("--plot", default=None, metavar="FILE.png", help="throughput and latency vs offered load")
    s.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides applied to every model")
    s.set_defaults(run=run_serve_command)


def _rates(text: str) -> list[float]:
    try:
        rates = [float(x) for x in text.split(",")]
    except ValueError:
        raise UserError(f"--rate {text!r}: expected comma-separated numbers of requests/s") from None
    if not rates or any(r <= 0 for r in rates):
        raise UserError(f"--rate {text!r}: every rate must be > 0")
    return rates


def run_serve_command(args: argparse.Namespace) -> int:
    from photon_jax.bench import serve_load
    from photon_jax.bench.models import load_models, parse_list, select_modes
    from photon_jax.reports import output

    for flag in ("requests", "prompt_len", "max_tokens", "max_context", "rounds"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.kv_budget_gib <= 0 or args.duration <= 0:
        raise UserError("--kv-budget-gib and --duration must be > 0")
    rates = _rates(args.rate)
    if not args.stagger_slots:  # the stagger measurement times --max-tokens steps, no prompt of --prompt-len
        serve_load.check_lengths(args.prompt_len, args.max_tokens, args.max_context)
    output.check_writable(args.json_file, "--json-file")
    output.check_writable(args.plot, "--plot")
    models = load_models(parse_list(args.models, "--models"), args.overrides)
    modes = select_modes(models, parse_list(args.modes, "--modes"))
    if args.stagger_slots:
        return _stagger(args, models, modes)
    pairs = [(m.name, None if mode == "vanilla" else mode) for m in models for mode in modes[m.name]]
    data = serve_load.bench_serve(pairs, args.kv_budget_gib, args.max_context, rates, args.requests, args.prompt_len,
                                  args.max_tokens, args.duration, args.overrides, args.seed, align=not args.no_align,
                                  log=lambda m: print(m, flush=True) if not args.json else None, rounds=args.rounds)
    print_json(data) if args.json else print(serve_load.table(data))
    if args.json_file:
        output.write_json(args.json_file, data)
    if args.plot:
        serve_load.plot(data, args.plot)
    return 0


def _stagger(args, models, modes) -> int:
    from photon_jax.bench import serve_stagger
    from photon_jax.bench.models import parse_ints, random_params
    from photon_jax.reports import output

    rows = []
    for m in models:
        if m.model.family == "vanilla":
            continue  # one level of tokens: no schedule to stagger
        params = random_params(m.model)
        for mode in modes[m.name]:
            for slots in parse_ints(args.stagger_slots, "--stagger-slots"):
                row = {"model": m.name, **serve_stagger.measure_stagger(m.model, params, mode, slots, args.max_context,
                                                                        steps=args.max_tokens)}
                rows.append(row)
                if not args.json:
                    print(f"{m.name} {mode} {slots} slots: aligned {row['aligned_ms_mean']:.1f} ms/step, staggered "
                          f"{row['staggered_ms_mean']:.1f} ms/step ({row['staggered_over_aligned']:.2f}x)", flush=True)
    data = {"benchmark": "serve_stagger", "max_context": args.max_context, "steps": args.max_tokens, "runs": rows}
    if args.json:
        print_json(data)
    if args.json_file:
        output.write_json(args.json_file, data)
    return 0
