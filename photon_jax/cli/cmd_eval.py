"""`photon-jax eval`: loss, perplexity and bits per byte of a trained run; multiple-choice accuracy;
lm-evaluation-harness tasks (--tasks)."""

from __future__ import annotations

import json

from photon_jax import distributed
from photon_jax.cli.common import add_json_flag, add_mesh_flag, add_run_args, parse_mesh, print_json
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
    p.add_argument("--batch-size", type=int, default=0, help="0 = train.batch_size (with --tasks: 8)")
    harness = p.add_argument_group("lm-evaluation-harness tasks (the [eval] extra)")
    harness.add_argument("--tasks", default=None,
                         help="comma-separated harness task names, e.g. hellaswag,sciq,arc_easy,wikitext")
    harness.add_argument("--include-path", action="append", default=[],
                         help="a directory of local task YAMLs (repeatable); local data files need no network")
    harness.add_argument("--limit", type=float, default=None,
                         help="documents per task (a fraction when < 1); for quick checks, not for reporting")
    harness.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples (default: the task's)")
    harness.add_argument("--mode", default=None, choices=["hiergen", "recgen", "exact-local", "vanilla"],
                         help="generation mode for generate_until tasks (default: hiergen; vanilla for vanilla)")
    harness.add_argument("--output", default=None, help="write the harness's full results JSON here")
    harness.add_argument("--log-samples", action="store_true", help="keep per-document samples in the results")
    p.add_argument("--recgen-agreement", action="store_true",
                   help="greedy-token agreement and KL of recgen (and exact-local) vs exact hiergen")
    p.add_argument("--agreement-windows", type=int, default=8, help="held-out windows for --recgen-agreement")
    pos = p.add_argument_group("held-out NLL by position (eval/by_position.py)")
    pos.add_argument("--by-position", action="store_true",
                     help="break the held-out NLL down by slot in each level's unit and by window position")
    pos.add_argument("--slots", default=None, metavar="P1,P2",
                     help="fold positions by these periods (default: the model's unit sizes C1, C1*C2, ...)")
    pos.add_argument("--compare", default=None, metavar="RUN,RUN",
                     help="also profile these runs, folded by the same periods (e.g. a vanilla run)")
    pos.add_argument("--plot", default=None, metavar="FILE.png", help="draw the profiles, runs overlaid")
    add_mesh_flag(p, "the saved mesh; same as mesh.* overrides")
    add_json_flag(p, "the results")
    p.set_defaults(run=run)


def run(args) -> int:
    from photon_jax.eval.evaluate import evaluate_run

    distributed.initialize_from_args(args)  # multi-process eval: flags or PHOTON_* / SLURM (launch/README.md)

    if args.max_batches < 0 or args.batch_size < 0:
        raise UserError("--max-batches and --batch-size must be >= 0")
    if args.tasks is not None:
        return run_tasks(args)
    if args.include_path or args.limit is not None or args.num_fewshot is not None or args.output or args.mode:
        raise UserError("--include-path, --limit, --num-fewshot, --mode and --output go with --tasks")
    periods = _check_by_position(args)
    results = evaluate_run(args.workdir, step=args.step, text=args.text, data=args.data, split=args.split,
                           choices=args.choices, max_batches=args.max_batches or None,
                           batch_size=args.batch_size or None, mesh_cfg=parse_mesh(args.mesh),
                           agreement_windows=args.agreement_windows if args.recgen_agreement else 0,
                           overrides=args.overrides, by_position=periods)
    if periods is not None:
        _compare_and_plot(args, results)
    if not distributed.is_main_process():
        return 0
    if args.json:
        print_json(results)
        return 0
    for name, value in results.items():
        if name in ("by_position", "compare"):
            continue
        if name == "agreement":
            print(f"{name}: " + json.dumps(value))
        elif isinstance(value, dict):
            print(f"{name}: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                          for k, v in value.items()))
        else:
            print(f"{name}: {value}")
    return 0


def _check_by_position(args) -> dict[str, int] | None:
    from photon_jax.eval.by_position import parse_periods
    from photon_jax.reports.output import check_writable

    if not args.by_position:
        if args.slots or args.compare or args.plot:
            raise UserError("--slots, --compare and --plot go with --by-position")
        return None
    if args.choices and not (args.text or args.data):
        raise UserError("--by-position profiles held-out text: drop --choices or add --text / --data")
    check_writable(args.plot, "--plot")
    return parse_periods(args.slots) or {}


def _compare_and_plot(args, results: dict) -> None:
    """Profile the --compare runs with the main run's periods; print (or plot) every profile."""
    from photon_jax.eval.by_position import first_slot_excess, position_plot
    from photon_jax.eval.evaluate import evaluate_run

    main = results["by_position"]
    periods = {name: folded["period"] for name, folded in main["slots"].items()}
    profiles = {main["model"]: main}
    for other in [w for w in (args.compare or "").split(",") if w.strip()]:
        got = evaluate_run(other.strip(), text=args.text, data=args.data, split=args.split,
                           max_batches=args.max_batches or None, batch_size=args.batch_size or None,
                           mesh_cfg=parse_mesh(args.mesh), by_position=periods)
        name = got["by_position"]["model"]
        profiles[name if name not in profiles else f"{name} ({other.strip()})"] = got["by_position"]
    results["compare"] = {name: p for name, p in profiles.items() if p is not main}
    if not distributed.is_main_process():
        return
    if args.plot:
        position_plot(profiles, args.plot)
    if args.json:
        return
    for name, p in profiles.items():
        print(f"{name}: held-out NLL {p['token_loss']:.4f} over {p['targets']:.0f} targets")
        for period_name, folded in p["slots"].items():
            excess = first_slot_excess(folded)
            cells = " ".join("  -   " if v is None else f"{v:.3f}" for v in folded["nll"])
            note = f"  (slot 0 - rest: {excess:+.3f} nats)" if excess is not None else ""
            print(f"  by slot in {period_name} (period {folded['period']}): {cells}{note}")
    if args.plot:
        print(f"plot: {args.plot}")


def run_tasks(args) -> int:
    from photon_jax.eval.evaluate import evaluate_run_tasks
    from photon_jax.eval.tasks import summary_table

    if args.text or args.data or args.choices or args.recgen_agreement:
        raise UserError("--tasks runs harness tasks alone: drop --text/--data/--choices/--recgen-agreement")
    out = evaluate_run_tasks(args.workdir, args.tasks, step=args.step, mesh_cfg=parse_mesh(args.mesh),
                             overrides=args.overrides, batch_size=args.batch_size or 8, limit=_limit(args.limit),
                             num_fewshot=args.num_fewshot, include_path=args.include_path, mode=args.mode,
                             output=args.output, log_samples=args.log_samples)
    if out is None:  # not process 0
        return 0
    if args.json:
        print_json({"run": out["run"], "summary": out["summary"], "harness": out["harness"]})
        return 0
    run = out["run"]
    print(f"{run['model']} step {run['step']} on mesh {run['mesh']}")
    print(summary_table(out["summary"]))
    if args.output:
        print(f"harness results: {args.output}")
    return 0


def _limit(value):
    if value is None:
        return None
    return int(value) if value >= 1 and float(value).is_integer() else value
