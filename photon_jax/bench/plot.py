"""PNG figures of the benchmark JSON (through photon_jax/reports/figures.py)."""

from __future__ import annotations

from photon_jax.reports.figures import plt, save_figure


def _label(r: dict) -> str:
    """The model name; with the mode for PHOTON and for non-default modes of the others."""
    plain = r["mode"] in ("vanilla", "hiergen") and r["family"] != "photon"
    return r["model"] if plain else f"{r['model']}\n{r['mode']}"


def tpm_plot(data: dict, path: str) -> None:
    """TPM per model and mode (log scale), one bar per regime; TPM vs perplexity when given."""
    rows = data["results"]
    regimes = list(dict.fromkeys(r["regime"] for r in rows))
    labels = list(dict.fromkeys(_label(r) for r in rows))
    with_ppl = [r for r in rows if r.get("perplexity") and r["tpm"]["measured"]]
    fig, axes = plt.subplots(1, 2 if with_ppl else 1, figsize=(13 if with_ppl else 8, 4.8), squeeze=False)
    ax = axes[0][0]
    width = 0.8 / max(len(regimes), 1)
    for j, regime in enumerate(regimes):
        xs, ys = [], []
        for r in rows:
            if r["regime"] == regime and r["tpm"]["measured"]:
                xs.append(labels.index(_label(r)) + (j - (len(regimes) - 1) / 2) * width)
                ys.append(r["tpm"]["measured"])
        (p, g) = data["settings"]["regimes"][regime]["prompt_len"], data["settings"]["regimes"][regime]["gen_len"]
        bars = ax.bar(xs, ys, width, label=f"{regime.upper()} ({p}/{g})")
        ax.bar_label(bars, fmt="%.3g", fontsize=7)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("TPM (K tokens/s per GiB of per-sample KV)")
    env = data["environment"]
    ax.set_title(f"Throughput per memory ({env['backend']}: {env['device_kind']})", fontsize=10)
    ax.legend(fontsize=8)
    if with_ppl:
        ax2 = axes[0][1]
        for regime in regimes:
            pts = [r for r in with_ppl if r["regime"] == regime]
            ax2.scatter([r["perplexity"] for r in pts], [r["tpm"]["measured"] for r in pts],
                        label=regime.upper())
            for r in pts:
                ax2.annotate(f"{r['model']} {r['mode']}", (r["perplexity"], r["tpm"]["measured"]), fontsize=7,
                             xytext=(3, 3), textcoords="offset points")
        ax2.set_yscale("log")
        ax2.set_xlabel("perplexity (given)")
        ax2.set_ylabel("TPM (K tokens/s/GiB)")
        ax2.set_title("TPM vs perplexity", fontsize=10)
        ax2.legend(fontsize=8)
    save_figure(fig, path)


def context_plot(data: dict, path: str) -> None:
    """Per-sample KV memory, decode tokens/s and time to first token vs context."""
    rows = data["results"]
    series = list(dict.fromkeys((r["model"], r["mode"]) for r in rows))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    for model, mode in series:
        pts = sorted((r for r in rows if (r["model"], r["mode"]) == (model, mode)), key=lambda r: r["context"])
        xs = [r["context"] for r in pts]
        name = f"{model} {mode}"
        line, = axes[0].plot(xs, [r["kv_bytes_per_sample"]["measured_total"] / 2 ** 20 for r in pts], "o-",
                             label=f"{name} (measured)")
        axes[0].plot(xs, [r["kv_bytes_per_sample"]["analytic_total"] / 2 ** 20 for r in pts], "--",
                     color=line.get_color(), alpha=0.6)
        axes[1].plot(xs, [r["decode_tokens_per_s"] for r in pts], "o-", label=name)
        axes[2].plot(xs, [1e3 * r["ttft_s"] for r in pts], "o-", label=name)
    titles = ["KV memory per sample (MiB; dashed: analytic)", "decode tokens/s", "time to first token (ms)"]
    for ax, title in zip(axes, titles):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context (prompt tokens)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    s = data["settings"]
    fig.suptitle(f"batch {s['batch']}, {s['gen_len']} generated tokens ({data['environment']['backend']})",
                 fontsize=10)
    save_figure(fig, path)
