"""`bench context`: per-sample KV memory, decode speed and time to first token as the context grows.

For each model, mode and context c: a prompt of c tokens at a small batch (default 1), then
--gen-len generated tokens. Reports the per-sample KV bytes for c + gen-len tokens (analytic
and measured), the prefill latency (time to first token) and the decode tokens/s, all warm
(median of --repeats).
"""

from __future__ import annotations

import gc
from typing import Callable

from photon_jax.bench import memory, runs
from photon_jax.bench.models import BenchModel, dtype_bytes, random_params, reference_model
from photon_jax.model.accounting import count_params
from photon_jax.reports.output import envelope

DEFAULT_CONTEXTS = (1024, 2048, 4096, 8192)


def run_context(models: list[BenchModel], modes: dict[str, list[str]], contexts: list[int], gen_len: int,
                batch: int, repeats: int, overrides: list[str] = (), log: Callable[[str], None] = print) -> dict:
    results, notes = [], []
    for m in models:
        cfg = m.model
        params = random_params(cfg)
        n_params = count_params(cfg)
        for mode in modes[m.name]:
            for c in contexts:
                log(f"[context] {m.name} {mode} context {c} (+{gen_len} generated), batch {batch}")
                kv = memory.per_sample_kv(cfg, mode, c + gen_len)
                timing, allocated = runs.timed_generation(cfg, params, mode, batch, c, gen_len, repeats)
                kv["allocated_total"] = allocated["caches_total"] // allocated["batch"]
                results.append({
                    "model": m.name, "family": m.family, "mode": mode, "context": c, "gen_len": gen_len,
                    "batch": batch, "params": n_params, "dtype": cfg.dtype, "kv_bytes_per_sample": kv,
                    "attention": allocated["attention"],
                    "timing": timing, "ttft_s": timing["ttft_s"], "decode_tokens_per_s": timing["decode_tokens_per_s"],
                    "kv_read_bytes_per_token": memory.kv_reads_per_token(cfg, mode, c, gen_len, dtype_bytes(cfg))})
        del params
        gc.collect()
    settings = {"contexts": list(contexts), "gen_len": gen_len, "batch": batch, "repeats": repeats,
                "models": [m.name for m in models], "modes": modes, "overrides": list(overrides),
                "sampling": "greedy, no EOS",
                "kv_context": "per-sample KV bytes for context + gen_len tokens"}
    return envelope("context", settings, reference_model(models), results, notes)
