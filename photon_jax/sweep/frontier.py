"""The quality-throughput frontier of a seeded grid at equal training FLOPs (the paper's Figure 3).

A grid with a `frontier:` section (grids/frontier-tiny.yaml) trains several architectures (a run's
preset or config file is its architecture) at several budgets: a run without `flop_match` defines a
budget, the runs FLOP-matched to it share it, so every architecture of a budget spent the same training
FLOPs, each on a learning-rate schedule that completes at that budget. After the runs are measured:

1. TPM comes from one side-by-side `bench tpm` per context over one model of each architecture, every
   generation mode, timed round-robin (bench/tpm.py, interleave) so that a slow spell of the machine falls
   on all alike. Weights are random: speed and memory do not depend on their values. Stored as
   tpm-<context>.json in the sweep dir and reused while its settings match.
2. Quality per architecture and mode, per seed, in two measures kept apart. Held-out perplexity: the
   whole validation split, for the exact modes (HierGen, exact-local, vanilla). Window perplexity: every
   mode of every run on the same held-out windows and positions (eval/windows.py; the runs share one
   prepared data dir, and differing window tokens are refused). RecGen is not exact and has only the
   window perplexity (the true continuation, teacher-forced), so it is only ever set beside other
   modes' window perplexities, never beside a held-out one.
3. Per budget: mean and sample std over seeds; ratios against the reference architecture of the same seed
   and budget on the same measure (held-out over held-out, window over window), and each mode's window
   perplexity over its own model's exact mode (RecGen over HierGen); TPM and its ratio against the
   reference's. Written as frontier.json / .csv / .txt / .md (REPORT.md's table), frontier.png (window
   perplexity against TPM, a panel per budget and regime) and frontier_flops.png (each measure against
   training FLOPs).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
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
    """One run's quality in one mode: held-out perplexity (exact modes: the whole validation split) and
    window perplexity (every mode its `windows` scored, eval/windows.py); None where neither was measured."""
    exact = mode in EXACT_MODES
    windows = record.get("windows") or {}
    scored = windows.get("modes", {}).get(mode)
    if not exact and scored is None:
        return None
    own_exact = windows.get("modes", {}).get(windows.get("exact_mode"))
    return {"heldout_ppl": record["validation"]["perplexity"] if exact else None,
            "bpb": record["validation"].get("bits_per_byte") if exact else None,
            "window_ppl": scored["perplexity"] if scored else None,
            # the mode's cost over the same model's exact mode, on the same windows (RecGen over HierGen)
            "window_vs_exact": (scored["perplexity"] / own_exact["perplexity"]
                                if scored and own_exact and scored is not own_exact else None)}


def _reference_quality(record: dict) -> dict:
    """The reference run's numbers that ratios divide by: its held-out and its exact mode's window perplexity."""
    windows = record.get("windows") or {}
    exact = windows.get("modes", {}).get(windows.get("exact_mode"))
    return {"heldout_ppl": record["validation"]["perplexity"], "window_ppl": exact["perplexity"] if exact else None}


def same_windows(records: dict[str, dict]) -> dict | None:
    """{windows, positions, tokens_sha256} shared by every record's window scores (None when no record has
    any); runs scored on other tokens are refused: their window perplexities would not compare."""
    seen: dict[tuple, list[str]] = {}
    for name, record in records.items():
        w = record.get("windows")
        if w:
            seen.setdefault((w["windows"], w["positions"], w["tokens_sha256"]), []).append(name)
    if len(seen) > 1:
        found = "; ".join(f"{', '.join(names[:2])}: {key[0]} windows, {key[1]} positions, tokens {key[2]}"
                          for key, names in seen.items())
        raise UserError(f"frontier: runs were scored on different held-out windows ({found}); they must share "
                        "one prepared data dir and measure.agreement_windows")
    if not seen:
        return None
    (count, positions, digest), = seen
    return {"windows": count, "positions": positions, "tokens_sha256": digest}


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _ratios(per_seed: dict, refs: dict, key: str) -> list[float]:
    """This mode's `key` over the reference's, seed by seed (paired)."""
    return [q[key] / refs[s][key] for s, q in per_seed.items()
            if s in refs and q[key] is not None and refs[s][key]]


def frontier_rows(grid: Grid, records: dict[str, dict], tpm: dict[str, dict]) -> list[dict]:
    """One row per (budget, architecture, mode) with quality over seeds and TPM per context and regime."""
    reference = reference_architecture(grid)
    windows = same_windows(records)
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
        refs = {s: _reference_quality(rec) for s, rec in by_cell.get((budget, reference), {}).items()}
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
                row = {"budget": budget, "train_flops": flops[budget], "architecture": arch,
                       "family": BenchModel(arch, spec.cfg).family,
                       "mode": mode, "seeds": sorted(s for s in per_seed if s is not None),
                       "steps": seeds[next(iter(seeds))]["steps"]}
                for key in ("heldout_ppl", "window_ppl"):
                    row[f"{key}_mean"], row[f"{key}_std"] = _mean_std([q[key] for q in per_seed.values()])
                    row[f"{key}_x_mean"], row[f"{key}_x_std"] = _mean_std(_ratios(per_seed, refs, key))
                row["window_vs_exact_mean"], row["window_vs_exact_std"] = _mean_std(
                    [q["window_vs_exact"] for q in per_seed.values()])
                row["bpb_mean"], row["bpb_std"] = _mean_std([q["bpb"] for q in per_seed.values()])
                if windows:
                    row["windows"], row["window_positions"] = windows["windows"], windows["positions"]
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

# (row key, header, format) of the printed quality columns: held-out (exact modes) and window perplexity
# (every mode on the same windows) apart; "ppl" is the one column of frontier.json files written before
# the window scores (held-out for the exact modes, RecGen's window perplexity in the same column).
PRINTED = [("heldout_ppl", "held-out ppl", ".2f"), ("heldout_ppl_x", "x", ".3f"),
           ("window_ppl", "window ppl", ".2f"), ("window_ppl_x", "x", ".3f"),
           ("window_vs_exact", "vs exact", ".3f"), ("ppl", "ppl", ".2f"), ("ppl_x", "ppl x", ".3f")]


def _present(rows: list[dict]) -> list[tuple[str, str, str]]:
    return [c for c in PRINTED if any(r.get(f"{c[0]}_mean") is not None for r in rows)]


def _window_words(rows: list[dict]) -> str:
    row = next((r for r in rows if r.get("windows")), None)
    return f"the same {row['windows']} held-out windows ({row['window_positions']} positions)" if row else \
        "the same held-out windows"


def frontier_text(rows: list[dict], reference: str, contexts: list[str]) -> str:
    printed = _present(rows)
    headers = ["budget (FLOPs)", "architecture", "mode", "seeds"] + [h for _, h, _ in printed]
    for label in contexts:
        headers += [f"DE TPM {label}", "x", f"PF TPM {label}", "x"]
    body = []
    for r in rows:
        cells = [f"{r['budget']} ({r['train_flops']:.3g})", r["architecture"], r["mode"], str(len(r["seeds"]))]
        for key, _, spec in printed:
            mean, std = r.get(f"{key}_mean"), r.get(f"{key}_std")
            cells.append("-" if mean is None else f"{fmt(mean, spec)} ± {fmt(std, spec)}")
        for label in contexts:
            for regime in ("de", "pf"):
                cells += [fmt(r.get(f"tpm_{regime}_{label}"), ".4g"), fmt(r.get(f"tpm_{regime}_{label}_x"), ".3g")]
        body.append(cells)
    if any(key == "ppl" for key, _, _ in printed):  # a frontier.json from before the window scores
        notes = [f"mean ± sample std over seeds; ppl x = vs {reference} of the same seed and budget (paired);",
                 "exact modes: held-out perplexity; recgen: its own perplexity on the agreement windows, its ratio =",
                 "its cost over HierGen on those windows x HierGen's held-out ratio; TPM = K generated tokens/s "
                 "per GiB",
                 "of KV cache from one interleaved side-by-side bench tpm per context (x = vs the reference's)"]
    else:
        notes = [f"mean ± sample std over seeds; x = vs {reference} of the same seed and budget on the same measure "
                 "(paired);",
                 "held-out ppl: the whole validation split, exact modes only (RecGen has no held-out perplexity);",
                 f"window ppl: every mode on {_window_words(rows)}, teacher-forced; vs exact = over the same",
                 "model's exact mode on those windows (RecGen: its cost over HierGen); TPM = K generated tokens/s",
                 "per GiB of KV cache from one interleaved side-by-side bench tpm per context (x = vs the reference's)"]
    return table(headers, body) + "\n" + "\n".join(notes)


def frontier_markdown(rows: list[dict], reference: str, contexts: list[str]) -> str:
    """The table of REPORT.md's Frontier section: quality columns apart, TPM as ratios to the reference."""
    printed = _present(rows)
    names = {"heldout_ppl": "held-out ppl", "heldout_ppl_x": f"held-out / {reference}",
             "window_ppl": "window ppl", "window_ppl_x": f"window / {reference}",
             "window_vs_exact": "window / own exact mode", "ppl": "perplexity", "ppl_x": f"ppl / {reference}"}
    headers = ["budget (training FLOPs)", "model", "mode", "steps"] + [names[k] for k, _, _ in printed]
    headers += [f"{regime.upper()} TPM x ({label})" for label in contexts for regime in ("de", "pf")]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for r in rows:
        cells = [f"{r['budget']} ({r['train_flops']:.3g})", r["architecture"], r["mode"], str(r["steps"])]
        for key, _, spec in printed:
            mean = r.get(f"{key}_mean")
            cells.append("-" if mean is None else f"{fmt(mean, spec)} ± {fmt(r.get(f'{key}_std'), spec)}")
        cells += [f"{fmt(r.get(f'tpm_{regime}_{label}_x'), '.3g')}x" for label in contexts for regime in ("de", "pf")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
    write_atomic(workdir / "frontier.md", frontier_markdown(rows, meta["reference"], contexts) + "\n")
    if plot and rows:
        frontier_figure(rows, contexts, str(workdir / "frontier.png"))
        flops_figure(rows, str(workdir / "frontier_flops.png"))


# (row key, axis label) of the perplexities a figure can show, in order of preference for the TPM frontier:
# one measure per axis, so RecGen only ever sits beside numbers taken on its own windows.
MEASURES = [("window_ppl", "window perplexity, every mode on the same windows"),
            ("heldout_ppl", "held-out perplexity (exact modes)"),
            ("ppl", "perplexity (RecGen: its window perplexity)")]  # a frontier.json from before the windows


def _measures(rows: list[dict]) -> list[tuple[str, str]]:
    return [m for m in MEASURES if any(r.get(f"{m[0]}_mean") is not None for r in rows)]


def frontier_figure(rows: list[dict], contexts: list[str], path: str) -> None:
    save_figure(draw_frontier(rows, contexts), path)


def draw_frontier(rows: list[dict], contexts: list[str]):
    """Perplexity (mean ± std over seeds; the window perplexity, which every mode has) against TPM: a column
    per budget, a row per regime and context (a matplotlib Figure; the notebook shows it from the committed
    frontier.json)."""
    key, ylabel = (_measures(rows) or MEASURES[:1])[0]
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
                tpm, value = r.get(f"tpm_{regime}_{label}"), r.get(f"{key}_mean")
                if tpm is None or value is None:
                    continue
                ax.errorbar([tpm], [value], yerr=[r.get(f"{key}_std") or 0.0], fmt=arch_marker[r["architecture"]],
                            color=MODE_COLORS.get(r["mode"], "black"), capsize=3,
                            label=f"{r['architecture']} {r['mode']}")
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # within a decade matplotlib labels minor ticks too
            ax.set_title(f"{rows_flops(rows, budget):.3g} training FLOPs: {regime.upper()} {label}", fontsize=8)
            ax.set_xlabel(f"{regime.upper()} TPM (K tok/s per GiB)", fontsize=8)
            if col == 0:
                ax.set_ylabel(f"{ylabel}\n(lower is better)", fontsize=7)
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=7)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def rows_flops(rows: list[dict], budget: str) -> float:
    return next(r["train_flops"] for r in rows if r["budget"] == budget)


def flops_figure(rows: list[dict], path: str) -> None:
    """Perplexity (mean ± std over seeds) against training FLOPs, a line per architecture and mode: a panel
    per measure (held-out for the exact modes, the window perplexity for every mode)."""
    measures = _measures(rows) or MEASURES[:1]
    fig, axes = plt.subplots(1, len(measures), figsize=(6 * len(measures), 4), squeeze=False)
    lines = list(dict.fromkeys((r["architecture"], r["mode"]) for r in rows))
    for ax, (key, label) in zip(axes[0], measures):
        for i, (arch, mode) in enumerate(lines):
            points = sorted((r["train_flops"], r[f"{key}_mean"], r.get(f"{key}_std") or 0.0) for r in rows
                            if r["architecture"] == arch and r["mode"] == mode and r.get(f"{key}_mean") is not None)
            if not points:
                continue
            x, y, err = zip(*points)
            ax.errorbar(x, y, yerr=err, marker=ARCH_MARKERS[i % len(ARCH_MARKERS)], capsize=3,
                        linestyle="-" if mode in EXACT_MODES else "--", label=f"{arch} {mode}")
        ax.set_xscale("log")
        ax.set_xlabel("training FLOPs")
        ax.set_ylabel(f"{label}\n(mean ± std over seeds)", fontsize=8)
        ax.set_title("quality against training compute", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def run_frontier(grid: Grid, workdir: Path, records: dict[str, dict], plot: bool = True,
                 log: Callable[[str], None] = print) -> dict:
    """TPM side by side (or reused), the frontier table and figures; returns {reference, contexts, rows}."""
    tpm = side_by_side_tpm(grid, workdir, log)
    reference = reference_architecture(grid)
    rows = frontier_rows(grid, records, tpm)
    meta = {"reference": reference, "contexts": list(tpm), "settings": grid.frontier,
            "runs_measured": len(records), "runs": len(grid.runs), "windows": same_windows(records),
            "tpm_files": [f"tpm-{label}.json" for label in tpm]}
    write_frontier(workdir, rows, meta, plot)
    return {**meta, "rows": rows}
