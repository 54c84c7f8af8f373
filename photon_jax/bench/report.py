"""What every benchmark result carries (stable keys, tests/test_bench.py) and the benchmarks' text tables.
The JSON envelope and file writing are photon_jax/reports/output.py, table formatting reports/tables.py."""

from __future__ import annotations

from photon_jax.reports.tables import fmt, table

# The keys every result of a benchmark carries (tests/test_bench.py holds them stable).
TOP_KEYS = ("schema_version", "benchmark", "created_utc", "environment", "settings", "reference", "results",
            "notes")
TPM_RESULT_KEYS = ("model", "family", "mode", "regime", "prompt_len", "gen_len", "params", "dtype", "batch",
                   "attention", "kv_bytes_per_sample", "timing", "ttft_s", "throughput_k_tokens_per_s",
                   "decode_k_tokens_per_s", "tpm", "kv_read_bytes_per_token", "vs_reference", "perplexity")
CONTEXT_RESULT_KEYS = ("model", "family", "mode", "context", "gen_len", "batch", "params", "dtype",
                       "attention", "kv_bytes_per_sample", "timing", "ttft_s", "decode_tokens_per_s",
                       "kv_read_bytes_per_token")
TRAIN_RESULT_KEYS = ("model", "family", "params", "seq_len", "batch_size", "tokens_per_step", "step_time_s",
                     "tokens_per_s", "train_flops_per_token", "achieved_flops_per_s", "mfu", "compile_s", "remat",
                     "attention", "step_memory_bytes", "peak_device_bytes", "vs_reference")


def attention_label(row: dict) -> str:
    """Which decode attention ran: 'pallas xN' (N kernel sites in the decode program) or 'xla'."""
    a = row["attention"]
    return f"pallas x{a['kernel_sites']}" if a["kernel_sites"] else "xla"


def tpm_table(data: dict) -> str:
    headers = ["model", "mode", "attn", "regime", "P/G", "batch", "KV/sample MiB", "analytic MiB", "KV read/tok KiB",
               "TTFT ms", "thr Ktok/s", "TPM", "TPM x", "mem /"]
    rows = []
    for r in data["results"]:
        kv = r["kv_bytes_per_sample"]
        b = r["batch"]
        batch = f"{b['used']}" + (f" (fit {b['fit']})" if b["capped"] else "")
        vs = r["vs_reference"] or {}
        rows.append([r["model"], r["mode"], attention_label(r), r["regime"].upper(),
                     f"{r['prompt_len']}/{r['gen_len']}",
                     batch,
                     fmt(kv["measured_total"] / 2 ** 20, ".4f"), fmt(kv["analytic_total"] / 2 ** 20, ".4f"),
                     fmt(r["kv_read_bytes_per_token"]["total"] / 1024, ".1f"), fmt(1e3 * r["ttft_s"], ".1f"),
                     fmt(r["throughput_k_tokens_per_s"], ".3f"), fmt(r["tpm"]["measured"], ".4g"),
                     fmt(vs.get("tpm_ratio"), ".3g"), fmt(vs.get("memory_reduction"), ".3g")])
    return table(headers, rows)


def context_table(data: dict) -> str:
    headers = ["model", "mode", "attn", "context", "KV/sample MiB", "analytic MiB", "TTFT ms", "decode tok/s",
               "KV read/tok KiB"]
    rows = [[r["model"], r["mode"], attention_label(r), str(r["context"]),
             fmt(r["kv_bytes_per_sample"]["measured_total"] / 2 ** 20, ".4f"),
             fmt(r["kv_bytes_per_sample"]["analytic_total"] / 2 ** 20, ".4f"), fmt(1e3 * r["ttft_s"], ".1f"),
             fmt(r["decode_tokens_per_s"], ".4g"), fmt(r["kv_read_bytes_per_token"]["total"] / 1024, ".1f")]
            for r in data["results"]]
    return table(headers, rows)


def train_table(data: dict) -> str:
    headers = ["model", "params", "seq x batch", "attn", "remat", "step ms", "temp MiB", "peak MiB", "tokens/s",
               "FLOPs/token", "MFU %", "FLOPs/tok x", "time/tok x", "FLOPs/tok/param x", "comm MiB",
               "comm / floor", "remats"]
    rows = []
    for r in data["results"]:
        vs = r["vs_reference"] or {}
        temp = (r["step_memory_bytes"] or {}).get("temporaries")
        peak = r["peak_device_bytes"]
        rows.append([r["model"], f"{r['params']:,}", f"{r['seq_len']}x{r['batch_size']}", r["attention"], r["remat"],
                     fmt(1e3 * r["step_time_s"], ".1f"), fmt(None if temp is None else temp / 2 ** 20, ".1f"),
                     fmt(None if peak is None else peak / 2 ** 20, ".1f"),
                     fmt(r["tokens_per_s"], ".4g"), fmt(r["train_flops_per_token"], ".3e"), fmt(100 * r["mfu"], ".2f"),
                     fmt(vs.get("flops_per_token_ratio"), ".3f"), fmt(vs.get("time_per_token_ratio"), ".3f"),
                     fmt(vs.get("flops_per_token_per_param_ratio"), ".3f"), *_communication_cells(r)])
    return table(headers, rows)


def _communication_cells(r: dict) -> list[str]:
    """Wire MiB per device per step of the compiled step, its ratio to the analytic floor (n/a on one
    device: nothing to send), XLA's involuntary rematerializations (docs/scale-out.md)."""
    comm = r.get("communication")
    if not comm:
        return ["n/a", "n/a", "n/a"]
    wire = comm["compiled"]["total"]["wire_bytes"] / 2 ** 20
    return [fmt(wire, ".1f"), fmt(comm["compiled_over_analytic"], ".2f"), str(len(r.get("rematerializations", [])))]
