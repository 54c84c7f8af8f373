"""Seeded grids: ratios within each seed, then mean and spread over seeds per run group.

A grid with `seeds: [0, 1, 2]` trains every run once per seed (NAME-s0, NAME-s1, ...). Ratio columns
(ppl x, TPM x, FLOPs x) are taken against the same seed's reference run, so their spread is the spread
of the ratio itself, not of two independent means. The summary has one row per group: `n_seeds`, and for
every numeric column of the per-run table `<column>_mean` and `<column>_std` (sample standard deviation,
ddof = 1; 0 for a single seed).
"""

from __future__ import annotations

import math
import statistics

from photon_jax.reports.tables import fmt, table
from photon_jax.sweep import table as results_table

# (column, header, format) of the printed summary: mean +- std
SUMMARY_PRINTED = [("val_ppl", "val ppl", ".2f"), ("val_bpb", "bits/byte", ".4f"), ("ppl_x", "ppl x", ".3f"),
                   ("tpm_pf_x", "PF x", ".3g"), ("tpm_de_x", "DE x", ".3g"),
                   ("recgen_agreement", "recgen agree", ".3f")]
_NOT_AGGREGATED = {"seed"}


def ratios_by_seed(rows: list[dict], reference_of_seed) -> list[dict]:
    """with_ratios applied within each seed (reference_of_seed(seed) -> that seed's reference run name)."""
    out = []
    for seed in sorted({r["seed"] for r in rows}):
        out += results_table.with_ratios([r for r in rows if r["seed"] == seed], reference_of_seed(seed))
    order = {r["run"]: i for i, r in enumerate(rows)}
    return sorted(out, key=lambda r: order[r["run"]])


def _numeric(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def aggregate(rows: list[dict]) -> list[dict]:
    """One row per group (in first-seen order): group, n_seeds, seeds, <col>_mean, <col>_std."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["group"], []).append(row)
    out = []
    for group, members in groups.items():
        summary = {"group": group, "n_seeds": len(members), "seeds": [m["seed"] for m in members]}
        for column in results_table.columns(members):
            if column in _NOT_AGGREGATED:
                continue
            values = [m.get(column) for m in members]
            if not values or not all(_numeric(v) for v in values):
                continue
            summary[f"{column}_mean"] = statistics.fmean(values)
            summary[f"{column}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out.append(summary)
    return out


def summary_text(summary: list[dict], reference: str | None) -> str:
    present = [c for c in SUMMARY_PRINTED if any(f"{c[0]}_mean" in r for r in summary)]
    body = []
    for row in summary:
        cells = [row["group"], str(row["n_seeds"])]
        for key, _, spec in present:
            mean = row.get(f"{key}_mean")
            cells.append("-" if mean is None else f"{fmt(mean, spec)} ± {fmt(row[f'{key}_std'], spec)}")
        body.append(cells)
    note = f"mean ± sample std over seeds; ratios within each seed vs {reference}" if reference else \
        "mean ± sample std over seeds"
    return table(["run", "seeds"] + [h for _, h, _ in present], body) + "\n" + note
