"""Figures of a sweep: loss curves, perplexity vs TPM (the paper's Figure 3 shape), ablation bars.

Each panel function draws on a given matplotlib Axes, so notebooks compose them freely;
sweep_figure puts all three in one PNG next to the results table.
"""

from __future__ import annotations

from photon_jax.reports.figures import plt, save_figure

FAMILY_MARKERS = {"vanilla": "s", "block": "^", "photon": "o"}


def run_colors(n: int) -> list:
    """Distinct colours for n runs: the default cycle up to 10, tab20 beyond."""
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return list(cycle if n <= len(cycle) else plt.get_cmap("tab20").colors)


def loss_curves(ax, records: list[dict], split: str = "validation") -> None:
    """Held-out (or train) token loss against training tokens, one line per run."""
    colors = run_colors(len(records))
    for i, rec in enumerate(records):
        points = rec["curve"][split]
        if not points:
            continue
        tokens_per_step = rec["train_tokens"] / rec["steps"]
        ax.plot([s * tokens_per_step for s, _ in points], [loss for _, loss in points], marker=".",
                label=rec["run"], color=colors[i % len(colors)])
    ax.set_xlabel("training tokens")
    ax.set_ylabel(f"{split} token loss (nats)")
    ax.set_title(f"{split} loss", fontsize=10)
    ax.legend(fontsize=7)


def ppl_vs_tpm(ax, rows: list[dict], regime: str = "de") -> None:
    """Each run at (perplexity, TPM) in one regime; PHOTON's recgen as a second point when measured."""
    colors = run_colors(len(rows))
    for i, row in enumerate(rows):
        marker, color = FAMILY_MARKERS.get(row["family"], "o"), colors[i % len(colors)]
        hier, rec = row.get(f"tpm_{regime}"), row.get(f"tpm_{regime}_recgen")
        if hier is not None:
            ax.scatter(row["val_ppl"], hier, marker=marker, s=40, color=color)
            ax.annotate(row["run"], (row["val_ppl"], hier), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if rec is not None and row["family"] == "photon":  # recgen: hollow, joined to the same model's hiergen
            ax.scatter(row["val_ppl"], rec, marker=marker, s=40, facecolors="none", edgecolors=color)
            if hier is not None:
                ax.plot([row["val_ppl"]] * 2, [hier, rec], color=color, lw=0.8, ls=":")
            ax.annotate(f"{row['run']} recgen", (row["val_ppl"], rec), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    ax.set_yscale("log")
    ax.set_xlabel("held-out perplexity (lower is better)")
    ax.set_ylabel(f"TPM {regime.upper()} (K tokens/s per GiB KV)")
    ax.set_title(f"perplexity vs throughput per memory ({regime.upper()})", fontsize=10)


def metric_bars(ax, rows: list[dict], metric: str = "val_ppl", label: str = "held-out perplexity") -> None:
    names = [r["run"] for r in rows if r.get(metric) is not None]
    values = [r[metric] for r in rows if r.get(metric) is not None]
    bars = ax.bar(range(len(names)), values)
    ax.bar_label(bars, fmt="%.3g", fontsize=7)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(label)
    ax.set_title(label, fontsize=10)


def budget_curves(ax, records: list[dict], x: str = "flops") -> None:
    """Held-out perplexity at each evaluated checkpoint against training FLOPs (or tokens), one line per
    run (measure.budget_steps): the budget at which one ordering overtakes another."""
    colors = run_colors(len(records))
    for i, rec in enumerate(records):
        points = rec.get("budget") or []
        if not points:
            continue
        ax.plot([p[x] for p in points], [p["perplexity"] for p in points], marker=FAMILY_MARKERS.get(
            rec.get("family"), "o"), label=rec["run"], color=colors[i % len(colors)])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training FLOPs" if x == "flops" else "training tokens")
    ax.set_ylabel("held-out perplexity")
    ax.set_title(f"perplexity vs training {'FLOPs' if x == 'flops' else 'tokens'}", fontsize=10)
    ax.legend(fontsize=7)


def sweep_figure(records: list[dict], rows: list[dict], path: str) -> None:
    has_tpm = any(r.get("tpm_de") is not None for r in rows)
    has_budget = any(rec.get("budget") for rec in records)
    panels = 2 + has_tpm + has_budget
    fig, axes = plt.subplots(1, panels, figsize=(5.6 * panels, 4.8), squeeze=False)
    loss_curves(axes[0][0], records)
    metric_bars(axes[0][1], rows)
    if has_tpm:
        ppl_vs_tpm(axes[0][2], rows)
    if has_budget:
        budget_curves(axes[0][-1], records)
    save_figure(fig, path)
