"""`photon-jax sweep GRID`: train and measure every run of a grid (resumable), write one results table."""

from __future__ import annotations

from pathlib import Path

from photon_jax.cli.common import add_json_flag, add_overrides, print_json
from photon_jax.config import GRID_DIR
from photon_jax.errors import UserError


def register(subparsers) -> None:
    p = subparsers.add_parser("sweep", help="a grid of configs -> resumable runs -> one results table")
    p.add_argument("grid", help=f"a grid YAML file, or the name of a shipped grid ({', '.join(grid_names())})")
    p.add_argument("--workdir", default=None, help="sweep directory (default: runs/sweeps/<grid name>)")
    p.add_argument("--only", default=None, help="comma-separated run names to train now (others are only tabled)")
    p.add_argument("--list", action="store_true", help="print the resolved runs (steps, params, FLOPs) and exit")
    p.add_argument("--no-plot", action="store_true", help="skip results.png")
    p.add_argument("--quiet", action="store_true", help="no per-step training output")
    add_json_flag(p, "the results table (or, with --list, the resolved runs)")
    add_overrides(p, " (applied to every run, last)")
    p.set_defaults(run=run)


def grid_names() -> list[str]:
    return sorted(p.stem for p in GRID_DIR.glob("*.yaml"))


def grid_path(name: str) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    named = GRID_DIR / f"{name}.yaml"
    if not named.is_file():
        raise UserError(f"unknown grid {name!r}: not a file, and not one of {', '.join(grid_names())}")
    return named


def run(args) -> int:
    from photon_jax.reports.tables import fmt, table
    from photon_jax.sweep import load_grid, run_sweep
    from photon_jax.sweep.measure import cost

    path = grid_path(args.grid)
    grid = load_grid(path, extra_overrides=args.overrides)
    if args.list:
        costs = [dict(run=spec.name, **cost(spec)) for spec in grid.runs]
        if args.json:
            print_json(costs)
            return 0
        rows = [[c["run"], c["family"], fmt(c["params"], ",d"), str(c["steps"]), fmt(c["train_tokens"], ",d"),
                 fmt(c["train_flops"], ".3e")] for c in costs]
        print(table(["run", "family", "params", "steps", "tokens", "train FLOPs"], rows))
        return 0
    only = [n for n in args.only.split(",") if n] if args.only else None
    workdir = args.workdir or str(Path("runs") / "sweeps" / path.stem)
    result = run_sweep(grid, workdir, only=only, quiet=args.quiet, plot=not args.no_plot)
    from photon_jax.sweep.seeds import summary_text
    from photon_jax.sweep.table import text

    if args.json:
        print_json({"reference": result["reference"], "rows": result["rows"], "finished": result["finished"],
                    "runs": len(result["runs"]), "workdir": str(Path(workdir).resolve()),
                    **({"summary": result["summary"]} if "summary" in result else {}),
                    **({"frontier": result["frontier"]} if "frontier" in result else {})})
        return 0
    if "summary" in result:  # a seeded grid: mean ± std per run group first
        print(summary_text(result["summary"], result["reference"]) + "\n")
    print(text(result["rows"], result["reference"]))
    table_path = Path(workdir).resolve() / "results.csv"
    print(f"{result['finished']} of {len(result['runs'])} runs finished; table in {table_path}")
    if "frontier" in result:  # sweep/frontier.py
        from photon_jax.sweep.frontier import frontier_text

        frontier = result["frontier"]
        print("\nfrontier at equal training FLOPs:\n" + frontier_text(frontier["rows"], frontier["reference"],
                                                                    frontier["contexts"]))
        print(f"frontier table and figures in {Path(workdir).resolve() / 'frontier.json'} (.csv, .txt, .png)")
    return 0
