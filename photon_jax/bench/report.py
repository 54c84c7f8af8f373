"""JSON envelope (stable keys, schema_version), environment facts, plain-text tables."""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
from pathlib import Path

import jax

from photon_jax import host_allocator
from photon_jax.errors import UserError

SCHEMA_VERSION = 1
GIB = 2 ** 30

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


def environment() -> dict:
    dev = jax.devices()[0]
    return {"backend": jax.default_backend(), "device_kind": dev.device_kind, "device_count": jax.device_count(),
            "jax_version": jax.__version__, "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "host_allocator": host_allocator.state()}


def envelope(benchmark: str, settings: dict, reference: str | None, results: list[dict], notes: list[str]) -> dict:
    return {"schema_version": SCHEMA_VERSION, "benchmark": benchmark,
            "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "environment": environment(), "settings": settings, "reference": reference, "results": results,
            "notes": notes}


def _clean(obj):
    """NaN / inf -> None so the file is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_json(path: str, data: dict) -> None:
    try:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(_clean(data), indent=2) + "\n")
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror}") from None


def check_writable(path: str | None, flag: str) -> None:
    """Fail before any benchmark work when an output path cannot be written."""
    if not path:
        return
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{flag} {path} is a directory; give a file name")
    parent = p.parent if str(p.parent) else Path(".")
    if parent.exists() and not os.access(parent, os.W_OK):
        raise UserError(f"{flag} {path}: directory {parent} is not writable")


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells):
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def fmt(x, spec: str = ".3g") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return format(x, spec)


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
