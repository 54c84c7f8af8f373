"""The quality-throughput frontier of a seeded grid at equal training FLOPs (the paper's Figure 3).

A grid with a `frontier:` section (grids/frontier-tiny.yaml) trains several architectures (a run's
preset or config file is its architecture) at several budgets: a run without `flop_match` defines a
budget, the runs FLOP-matched to it share it, so every architecture of a budget spent the same training
FLOPs, each on a learning-rate schedule that completes at that budget. After the runs are measured:

1. TPM comes from one side-by-side `bench tpm` per context over one model of each architecture, every
   generation mode, timed round-robin (bench/tpm.py, interleave) so that a slow spell of the machine falls
   on all alike. Weights are random: speed and memory do not depend on their values. Stored as
   tpm-<context>.json in the sweep dir and reused while its settings match.
2. Quality per architecture and mode, per seed. The exact modes (HierGen, exact-local, vanilla) give the
   teacher-forced held-out perplexity. RecGen is not exact, so its quality is its own: the perplexity of
   the true continuation under RecGen on the agreement windows (generation/agreement.py), with HierGen's
   on the same windows beside it. RecGen's ratio is paired twice: its cost over HierGen on the same
   windows times HierGen's held-out ratio.
3. Per budget: mean and sample std over seeds; perplexity ratios against the reference architecture of the
   same seed and budget; TPM and its ratio against the reference's. Written as frontier.json / .csv / .txt,
   frontier.png (perplexity against TPM, a panel per budget and regime) and frontier_flops.png
   (perplexity against training FLOPs).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import statistics
from pathlib import Path
from typing import Callable

from matplotlib.ticker import NullFormatter

from photon_jax.bench.models import BenchModel, select_modes
from photon_jax.bench.tpm import parse_regime_value, run_tpm
from photon_jax.errors import UserError
from photon_jax.reports.figures import plt, save_figure
from photon_jax.reports.output import GIB, write_json
from photon_jax.reports.tables import fmt, table
from photon_jax.sweep.frontier_settings import architectures, budget_of
from photon_jax.sweep.grid import Grid
from photon_jax.sweep.table import write_atomic

EXACT_MODES = ("hiergen", "exact-local", "vanilla")
MODE_COLORS = {"hiergen": "tab:blue", "recgen": "tab:orange", "exact-local": "tab:green", "vanilla": "tab:gray"}
ARCH_MARKERS = ("o", "^", "s", "D", "v", "P")


def reference_architecture(grid: Grid) -> str:
    chosen = grid.frontier["reference"]
    if chosen:
        return chosen
    vanilla = [s.source for s in grid.runs if s.cfg.model.family == "vanilla"]
    if not vanilla:
        raise UserError("frontier: the grid has no vanilla run; name frontier.reference")
    return vanilla[0]


# ----------------------------------------------------------------------------- TPM, side by side

def context_label(context: dict) -> str:
    return f"pf{context['pf']}-de{context['de']}".replace("/", "x")


def side_by_side_tpm(grid: Grid, workdir: Path, log: Callable[[str], None] = print) -> dict[str, dict]:
    """Context label -> the bench tpm result over every architecture (run, or reused from the sweep dir)."""
    settings = grid.frontier
    arch = architectures(list(grid.runs))
    models = [BenchModel(source, spec.cfg) for source, spec in arch.items()]
    modes = select_modes(models, None)
    out = {}
    for context in settings["contexts"]:
        label = context_label(context)
        regimes = {r: parse_regime_value(context[r], f"frontier {r}") for r in ("pf", "de")}
        key = {"models": {m.name: repr(m.cfg.model) for m in models}, "regimes": regimes,
               "repeats": settings["repeats"], "max_batch": settings["max_batch"],
               "memory_budget_gib": settings["memory_budget_gib"]}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
        path = workdir / f"tpm-{label}.json"
        try:
            stored = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            stored = None
        if stored and stored.get("frontier_key") == digest:
            out[label] = stored
            continue
        log(f"[frontier] side-by-side TPM at {label}: {', '.join(m.name for m in models)}, "
            f"{settings['repeats']} interleaved rounds")
        data = run_tpm(models, modes, regimes, int(settings["memory_budget_gib"] * GIB), settings["max_batch"],
                       settings["repeats"], device_slope=False, interleave=True, log=log)
        data["frontier_key"] = digest
        write_json(str(path), data)
        out[label] = data
    return out


# ----------------------------------------------------------------------------- quality per seed

def _quality(record: dict, mode: str) -> dict | None:
    """One run's quality in one mode: {ppl, ppl_scale (to pair ratios), ...}; None where not measured."""
    v = record["validation"]
    if mode in EXACT_MODES:
        return {"ppl": v["perplexity"], "bpb": v.get("bits_per_byte"), "ppl_vs_exact": 1.0}
    agreement = record.get("agreement") or {}
    forced = (agreement.get("hiergen_vs_recgen") or {}).get("teacher_forced")
    if mode != "recgen" or not forced:
        return None
    cost = math.exp(forced["nll"] - agreement["nll_hiergen"])  # RecGen over HierGen, same windows
    return {"ppl": math.exp(forced["nll"]), "hiergen_window_ppl": math.exp(agreement["nll_hiergen"]),
            "windows": agreement["windows"], "positions": agreement["positions"], "ppl_vs_exact": cost}


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def frontier_rows(grid: Grid, records: dict[str, dict], tpm: dict[str, dict]) -> list[dict]:
    """One row per (budget, architecture, mode) with quality over seeds and TPM per context and regime."""
    reference = reference_architecture(grid)
    by_cell: dict[tuple[str, str], dict] = {}  # (budget, architecture) -> {seed: record}
    flops: dict[str, float] = {}  # budget -> its training FLOPs (equal across its runs by construction)
    for spec in grid.runs:
        if spec.name in records:
            by_cell.setdefault((budget_of(spec), spec.source), {})[spec.seed] = records[spec.name]
            flops.setdefault(budget_of(spec), records[spec.name]["train_flops"])
    budgets = list(dict.fromkeys(budget_of(s) for s in grid.runs))
    arch_specs = architectures(list(grid.runs))
    tpm_rows = {(r["model"], r["mode"], label, r["regime"]): r for label, data in tpm.items()
                for r in data["results"]}
    rows = []
    for budget in [b for b in budgets if b in flops]:
        ref_seeds = by_cell.get((budget, reference), {})
        for arch, spec in arch_specs.items():
            seeds = by_cell.get((budget, arch))
            if not seeds:
                continue
            modes = sorted({mode for (model, mode, _, _) in tpm_rows if model == arch},
                           key=lambda m: (m not in EXACT_MODES, m)) or ["vanilla"]
            for mode in modes:
                per_seed = {s: q for s, rec in seeds.items() if (q := _quality(rec, mode)) is not None}
                if not per_seed:
                    continue
                ratios = [q["ppl_vs_exact"] * seeds[s]["validation"]["perplexity"]
                          / ref_seeds[s]["validation"]["perplexity"] for s, q in per_seed.items() if s in ref_seeds]
                row = {"budget": budget, "train_flops": flops[budget], "architecture": arch,
                       "family": BenchModel(arch, spec.cfg).family,
                       "mode": mode, "seeds": sorted(s for s in per_seed if s is not None),
                       "quality": "held-out perplexity" if mode in EXACT_MODES else
                       "RecGen perplexity on the agreement windows",
                       "steps": seeds[next(iter(seeds))]["steps"]}
                row["ppl_mean"], row["ppl_std"] = _mean_std([q["ppl"] for q in per_seed.values()])
                row["ppl_x_mean"], row["ppl_x_std"] = _mean_std(ratios)
                row["bpb_mean"], row["bpb_std"] = _mean_std([q.get("bpb") for q in per_seed.values()])
                if mode not in EXACT_MODES:
                    row["hiergen_window_ppl_mean"], _ = _mean_std([q["hiergen_window_ppl"]
                                                                   for q in per_seed.values()])
                    row["windows"] = next(iter(per_seed.values()))["windows"]
                for (model, tmode, label, regime), r in tpm_rows.items():
                    if model == arch and tmode == mode:
                        ref = next((x for (m, _, lab, reg), x in tpm_rows.items()
                                    if m == reference and lab == label and reg == regime), None)
                        row[f"tpm_{regime}_{label}"] = r["tpm"]["measured"]
                        row[f"tpm_{regime}_{label}_x"] = (r["tpm"]["measured"] / ref["tpm"]["measured"]
                                                          if ref and ref["tpm"]["measured"] else None)
                rows.append(row)
    return rows


# ----------------------------------------------------------------------------- outputs

PRINTED = [("ppl", "ppl", ".2f"), ("ppl_x", "ppl x", ".3f")]


def frontier_text(rows: list[dict], reference: str, contexts: list[str]) -> str:
    headers = ["budget (FLOPs)", "architecture", "mode", "seeds", "ppl", "ppl x"]
    for label in contexts:
        headers += [f"DE TPM {label}", "x", f"PF TPM {label}", "x"]
    body = []
    for r in rows:
        cells = [f"{r['budget']} ({r['train_flops']:.3g})", r["architecture"], r["mode"], str(len(r["seeds"]))]
        for key, _, spec in PRINTED:
            mean, std = r.get(f"{key}_mean"), r.get(f"{key}_std")
            cells.append("-" if mean is None else f"{fmt(mean, spec)} ± {fmt(std, spec)}")
        for label in contexts:
            for regime in ("de", "pf"):
                cells += [fmt(r.get(f"tpm_{regime}_{label}"), ".4g"), fmt(r.get(f"tpm_{regime}_{label}_x"), ".3g")]
        body.append(cells)
    notes = [f"mean ± sample std over seeds; ppl x = vs {reference} of the same seed and budget (paired);",
             "exact modes: held-out perplexity; recgen: its own perplexity on the agreement windows, its ratio =",
             "its cost over HierGen on those windows x HierGen's held-out ratio; TPM = K generated tokens/s per GiB",
             "of KV cache from one interleaved side-by-side bench tpm per context (x = vs the reference's)"]
    return table(headers, body) + "\n" + "\n".join(notes)


def write_frontier(workdir: Path, rows: list[dict], meta: dict, plot: bool = True) -> None:
    contexts = meta["contexts"]
    write_atomic(workdir / "frontier.json", json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (" ".join(map(str, v)) if isinstance(v, list) else v) for k, v in r.items()})
    write_atomic(workdir / "frontier.csv", buffer.getvalue())
    write_atomic(workdir / "frontier.txt", frontier_text(rows, meta["reference"], contexts) + "\n")
    if plot and rows:
        frontier_figure(rows, contexts, str(workdir / "frontier.png"))
        flops_figure(rows, str(workdir / "frontier_flops.png"))


def frontier_figure(rows: list[dict], contexts: list[str], path: str) -> None:
    save_figure(draw_frontier(rows, contexts), path)


def draw_frontier(rows: list[dict], contexts: list[str]):
    """Perplexity (mean ± std over seeds) against TPM: a column per budget, a row per regime and context
    (a matplotlib Figure; the notebook shows it from the committed frontier.json)."""
    budgets = list(dict.fromkeys(r["budget"] for r in rows))
    panels = [(regime, label) for label in contexts for regime in ("de", "pf")]
    arch_marker = {a: ARCH_MARKERS[i % len(ARCH_MARKERS)]
                   for i, a in enumerate(dict.fromkeys(r["architecture"] for r in rows))}
    fig, axes = plt.subplots(len(panels), len(budgets), figsize=(4.2 * len(budgets), 3.4 * len(panels)),
                             squeeze=False, sharey=True, sharex="row")  # a row: one regime and context
    for col, budget in enumerate(budgets):
        for row_index, (regime, label) in enumerate(panels):
            ax = axes[row_index][col]
            for r in [x for x in rows if x["budget"] == budget]:
                tpm = r.get(f"tpm_{regime}_{label}")
                if tpm is None or r["ppl_mean"] is None:
                    continue
                ax.errorbar([tpm], [r["ppl_mean"]], yerr=[r["ppl_std"] or 0.0], fmt=arch_marker[r["architecture"]],
                            color=MODE_COLORS.get(r["mode"], "black"), capsize=3,
                            label=f"{r['architecture']} {r['mode']}")
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # within a decade matplotlib labels minor ticks too
            ax.set_title(f"{rows_flops(rows, budget):.3g} training FLOPs: {regime.upper()} {label}", fontsize=8)
            ax.set_xlabel(f"{regime.upper()} TPM (K tok/s per GiB)", fontsize=8)
            if col == 0:
                ax.set_ylabel("perplexity (lower is better)", fontsize=8)
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=7)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def rows_flops(rows: list[dict], budget: str) -> float:
    return next(r["train_flops"] for r in rows if r["budget"] == budget)


def flops_figure(rows: list[dict], path: str) -> None:
    """Perplexity (mean ± std over seeds) against training FLOPs, a line per architecture and mode."""
    fig, ax = plt.subplots(figsize=(6, 4))
    lines = dict.fromkeys((r["architecture"], r["mode"]) for r in rows)
    for i, (arch, mode) in enumerate(lines):
        points = sorted((r["train_flops"], r["ppl_mean"], r["ppl_std"] or 0.0) for r in rows
                        if r["architecture"] == arch and r["mode"] == mode and r["ppl_mean"] is not None)
        if not points:
            continue
        x, y, err = zip(*points)
        ax.errorbar(x, y, yerr=err, marker=ARCH_MARKERS[i % len(ARCH_MARKERS)], capsize=3,
                    linestyle="-" if mode in EXACT_MODES else "--", label=f"{arch} {mode}")
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("perplexity (mean ± std over seeds)")
    ax.set_title("quality against training compute", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, path)


def run_frontier(grid: Grid, workdir: Path, records: dict[str, dict], plot: bool = True,
                 log: Callable[[str], None] = print) -> dict:
    """TPM side by side (or reused), the frontier table and figures; returns {reference, contexts, rows}."""
    tpm = side_by_side_tpm(grid, workdir, log)
    reference = reference_architecture(grid)
    rows = frontier_rows(grid, records, tpm)
    meta = {"reference": reference, "contexts": list(tpm), "settings": grid.frontier,
            "runs_measured": len(records), "runs": len(grid.runs),
            "tpm_files": [f"tpm-{label}.json" for label in tpm]}
    write_frontier(workdir, rows, meta, plot)
    return {**meta, "rows": rows}
