"""`photon-jax bench {tpm,context,train}`: the paper's efficiency protocol (docs/method.md 9) and training speed.

Every input is checked before any model runs; bad input is one line and exit 2. Tables go to
stdout (or, with --json, the whole result as JSON), progress to stderr; --json-file and --plot write
files (photon_jax/bench/report.py, plot.py; photon_jax/reports/).
"""

from __future__ import annotations

import argparse
import sys

from photon_jax.cli.bench_serve_args import add_serve_parser
from photon_jax.cli.common import add_json_flag, print_json
from photon_jax.errors import UserError

DEFAULT_MODELS = "photon-tiny,block-tiny,vanilla-tiny"
CPU_MAX_BATCH = 64
ACCEL_MAX_BATCH = 1024
CPU_BUDGET_GIB = 1.0
ACCEL_BUDGET_FRACTION = 0.5


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="efficiency benchmarks: tpm, context, train, prepare, serve")
    sub = p.add_subparsers(dest="bench_command", metavar="BENCH", parser_class=type(p))
    sub.required = True

    t = sub.add_parser("tpm", help="throughput per memory in the prefill-heavy (PF) / decode-heavy (DE) regimes")
    _common(t)
    t.add_argument("--regime", default="both", choices=["pf", "de", "both"],
                   help="PF = 2048 prompt / 128 generated, DE = 128 / 2048 (default: both)")
    t.add_argument("--pf", default=None, metavar="P/G", help="PF regime lengths, e.g. 256/32 on CPU")
    t.add_argument("--de", default=None, metavar="P/G", help="DE regime lengths, e.g. 32/256 on CPU")
    t.add_argument("--prompt-len", type=int, default=None, help="prompt length of the one selected regime")
    t.add_argument("--gen-len", type=int, default=None, help="generated length of the one selected regime")
    t.add_argument("--memory-budget", type=float, default=None, metavar="GiB",
                   help=f"KV-cache budget for the batch search (default: {ACCEL_BUDGET_FRACTION:g} x device memory "
                        f"where reported, else {CPU_BUDGET_GIB:g} GiB)")
    t.add_argument("--max-batch", type=int, default=None,
                   help=f"cap on the batch that is run (default {CPU_MAX_BATCH} on CPU, {ACCEL_MAX_BATCH} elsewhere)")
    t.add_argument("--perplexities", default=None, metavar="NAME=PPL,...",
                   help="perplexity of each model, for the TPM-vs-perplexity plot")
    t.add_argument("--interleave", action="store_true",
                   help="time the models round-robin (each model and mode once per repeat, all weights held), so "
                        "a slow spell of the machine falls on every model alike: for side-by-side ratios")
    t.add_argument("--no-device-slope", action="store_true",
                   help="skip the device-memory slope (GPU: one extra run per model and mode)")
    t.add_argument("--plot", default=None, metavar="FILE.png")
    t.set_defaults(run=_profiled(run_tpm_command))

    c = sub.add_parser("context", help="KV memory, decode tokens/s and time to first token vs context")
    _common(c)
    c.add_argument("--contexts", default="1024,2048,4096,8192", help="prompt lengths (comma-separated)")
    c.add_argument("--gen-len", type=int, default=64, help="tokens generated after each prompt")
    c.add_argument("--batch-size", type=int, default=1)
    c.add_argument("--plot", default=None, metavar="FILE.png")
    c.set_defaults(run=_profiled(run_context_command))

    r = sub.add_parser("train", help="tokens/s and MFU of the jitted train step")
    r.add_argument("--models", default=DEFAULT_MODELS, help=f"presets or YAML files (default {DEFAULT_MODELS})")
    r.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    r.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    r.add_argument("--batch-size", type=int, default=None, help="sequences per step (default: the preset's)")
    r.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: the preset's)")
    r.add_argument("--devices", type=int, default=None, help="use the first N devices (default: all)")
    r.add_argument("--target", choices=("cpu", "gpu", "tpu"), default=None,
                   help="compile and time this platform's code path on the devices at hand (default: theirs)")
    _json_args(r)
    r.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides applied to every model")
    r.set_defaults(run=_profiled(run_train_command), host_allocator=True)  # photon_jax/host_allocator.py


    d = sub.add_parser("prepare", help="prepare's tokenization throughput, speed-up and peak memory per worker count")
    d.add_argument("--size", default="1GB", help="size of the generated corpus, e.g. 200MB, 1GB (default 1GB)")
    d.add_argument("--workers", default="1,2", help="worker counts to compare (default 1,2)")
    d.add_argument("--corpus", default=None, help="prepare this corpus instead of a generated one")
    d.add_argument("--tokenizer", default=None, help="a .model / tokenizer.json (default: train one on a sample)")
    d.add_argument("--vocab-size", type=int, default=8192, help="size of the trained tokenizer (default 8192)")
    d.add_argument("--unit-mb", type=float, default=64, help="input MB per work unit (default 64)")
    d.add_argument("--workdir", default=None, help="keep the generated corpus and tokenizer here (default: a temp dir)")
    add_json_flag(d, "the whole result")
    d.add_argument("--json-file", default=None, metavar="FILE", help="also write the result as JSON to FILE")
    d.add_argument("--plot", default=None, metavar="FILE.png")
    d.set_defaults(run=run_prepare_command)

    add_serve_parser(sub)  # bench serve (cli/bench_serve_args.py)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", default=DEFAULT_MODELS, help=f"presets or YAML files (default {DEFAULT_MODELS})")
    p.add_argument("--modes", default=None,
                   help="PHOTON generation modes (hiergen, recgen, exact-local); vanilla models run 'vanilla' "
                        "(default: every mode each model supports; one-level models: hiergen)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs after the warm-up (median reported)")
    _json_args(p)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides applied to every model")


def _json_args(p: argparse.ArgumentParser) -> None:
    add_json_flag(p, "the whole result")
    p.add_argument("--json-file", default=None, metavar="FILE", help="also write the result as JSON to FILE")
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="write a jax.profiler trace of the whole benchmark into DIR (TensorBoard profile plugin)")


def _profiled(command):
    """The bench command, traced by jax.profiler into --profile DIR when given."""
    def run(args) -> int:
        if not args.profile:
            return command(args)
        import jax

        with jax.profiler.trace(args.profile):
            code = command(args)
        _log(f"profile written to {args.profile}/plugins/profile/")
        return code
    return run


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _positive(value, flag: str) -> None:
    if value is not None and value < 1:
        raise UserError(f"{flag} must be >= 1, got {value}")


def _load(args):
    from photon_jax.bench.models import load_models, parse_list, select_modes

    models = load_models(parse_list(args.models, "--models"), args.overrides)
    requested = parse_list(args.modes, "--modes") if args.modes is not None else None
    return models, select_modes(models, requested)


def run_tpm_command(args) -> int:
    import jax

    from photon_jax.bench import memory, plot, report, tpm
    from photon_jax.reports import output

    regimes = tpm.resolve_regimes(args.regime, args.prompt_len, args.gen_len, args.pf, args.de)
    _positive(args.repeats, "--repeats")
    _positive(args.max_batch, "--max-batch")
    if args.memory_budget is not None and not args.memory_budget > 0:
        raise UserError(f"--memory-budget must be > 0 GiB, got {args.memory_budget:g}")
    output.check_writable(args.json_file, "--json-file")
    output.check_writable(args.plot, "--plot")
    models, modes = _load(args)
    ppl = tpm.parse_perplexities(args.perplexities, [m.name for m in models])
    on_cpu = jax.default_backend() == "cpu"
    max_batch = args.max_batch or (CPU_MAX_BATCH if on_cpu else ACCEL_MAX_BATCH)
    if args.memory_budget is not None:
        budget = int(args.memory_budget * output.GIB)
    else:
        limit = memory.device_bytes_limit()
        budget = int(ACCEL_BUDGET_FRACTION * limit) if limit else int(CPU_BUDGET_GIB * output.GIB)
    data = tpm.run_tpm(models, modes, regimes, budget, max_batch, args.repeats, ppl,
                       device_slope=not args.no_device_slope, overrides=args.overrides,
                       interleave=args.interleave, log=_log)
    if args.json:
        print_json(data)
    else:
        print(report.tpm_table(data))
    _log(f"memory budget {budget / output.GIB:.3g} GiB of KV cache; batch capped at {max_batch} "
          f"({'--max-batch' if args.max_batch else 'default on ' + jax.default_backend()}); "
          f"TPM = K tokens/s per GiB per sample; x/ = vs {data['reference'] or 'no vanilla model'}")
    for note in data["notes"]:
        _log(f"note: {note}")
    _write(args, data, plot.tpm_plot)
    return 0


def run_context_command(args) -> int:
    from photon_jax.bench import context, plot, report
    from photon_jax.bench.models import parse_ints
    from photon_jax.reports import output

    contexts = parse_ints(args.contexts, "--contexts")
    _positive(args.gen_len, "--gen-len")
    _positive(args.batch_size, "--batch-size")
    _positive(args.repeats, "--repeats")
    output.check_writable(args.json_file, "--json-file")
    output.check_writable(args.plot, "--plot")
    models, modes = _load(args)
    data = context.run_context(models, modes, contexts, args.gen_len, args.batch_size, args.repeats,
                               overrides=args.overrides, log=_log)
    print_json(data) if args.json else print(report.context_table(data))
    _write(args, data, plot.context_plot)
    return 0


def run_train_command(args) -> int:
    from photon_jax.bench import report, train_bench
    from photon_jax.bench.models import load_models, parse_list
    from photon_jax.reports import output

    _positive(args.steps, "--steps")
    _positive(args.batch_size, "--batch-size")
    _positive(args.seq_len, "--seq-len")
    if args.warmup < 0:
        raise UserError(f"--warmup must be >= 0, got {args.warmup}")
    output.check_writable(args.json_file, "--json-file")
    models = load_models(parse_list(args.models, "--models"), args.overrides)
    data = train_bench.run_train(models, args.steps, args.warmup, args.batch_size, args.seq_len,
                                 devices=args.devices, overrides=args.overrides, log=_log, target=args.target)
    print_json(data) if args.json else print(report.train_table(data))
    s = data["settings"]
    _log(f"peak {s['peak_flops_per_device']:.3e} FLOP/s per device ({s['peak_source']}); "
         f"x = vs {data['reference'] or 'no vanilla model'}")
    _write(args, data, None)
    return 0


def run_prepare_command(args) -> int:
    from photon_jax.bench import prepare_bench
    from photon_jax.bench.models import parse_ints
    from photon_jax.reports import output

    size = prepare_bench.parse_size(args.size)
    workers = parse_ints(args.workers, "--workers")
    _positive(args.vocab_size, "--vocab-size")
    if not args.unit_mb > 0:
        raise UserError(f"--unit-mb must be > 0, got {args.unit_mb}")
    output.check_writable(args.json_file, "--json-file")
    output.check_writable(args.plot, "--plot")
    if args.corpus:
        from photon_jax.data.preparation.corpus import corpus_inputs

        corpus_inputs(args.corpus)  # a bad --corpus is refused before anything runs
    if args.tokenizer:
        from photon_jax.tokenizers.tokenizer import load_tokenizer

        load_tokenizer(args.tokenizer)
    data = prepare_bench.run_prepare_bench(size, workers, corpus=args.corpus, tokenizer=args.tokenizer,
                                           vocab_size=args.vocab_size, unit_bytes=int(args.unit_mb * (1 << 20)),
                                           workdir=args.workdir, log=_log)
    print_json(data) if args.json else print(prepare_bench.prepare_table(data))
    _write(args, data, prepare_bench.prepare_plot)
    return 0


def _write(args, data: dict, plotter) -> None:
    from photon_jax.reports import output

    if args.json_file:
        output.write_json(args.json_file, data)
        _log(f"wrote {args.json_file}")
    if plotter is not None and args.plot:
        plotter(data, args.plot)
        _log(f"wrote {args.plot}")
