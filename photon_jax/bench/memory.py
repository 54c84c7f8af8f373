"""Per-sample KV memory (analytic and measured), the batch search, KV reads per generated token.

Three memory figures per (model, mode, context), all bytes per sample:
* analytic: accounting.kv_bytes_per_sample in the compute dtype (docs/method.md 9);
* measured: the cache trees the generation code allocates for that context
  (generation.caches.cache_memory_report, built by the same functions as the real caches;
  runs.py also checks the arrays a real run returns). They differ from the analytic count in
  two stated ways: global caches hold the context rounded up to a whole meta-context, and the
  local decoder caches hold R + C - 1 rows where the analytic count says R + C;
* device: on backends that report memory (GPU), the slope over batch size of the device
  bytes held by a finished run's cache state (runs.py); None elsewhere.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax

from photon_jax.config import ModelConfig
from photon_jax.generation.caches import cache_memory_report
from photon_jax.model.hierarchy import Hierarchy

_SEARCH_LIMIT = 2 ** 40  # no batch is searched beyond this (guards a zero-byte cache)


def per_sample_kv(cfg: ModelConfig, mode: str, context: int) -> dict:
    """Analytic and measured KV bytes per sample for `context` tokens (prompt + generated)."""
    report = cache_memory_report(cfg, batch=1, max_len=context)
    entry = report["modes"][mode]
    return {"context": context, "dtype": cfg.dtype,
            "analytic": {k: int(v) for k, v in entry["analytic"].items()},
            "analytic_total": int(entry["analytic_total"]),
            "measured": {k: int(v) for k, v in entry["measured"].items()},
            "measured_total": int(entry["measured_total"])}


def cache_bytes_fn(cfg: ModelConfig, mode: str, context: int) -> Callable[[int], int]:
    """batch -> bytes of the cache trees the generation code allocates for that batch."""
    def total(batch: int) -> int:
        return int(cache_memory_report(cfg, batch=batch, max_len=context)["modes"][mode]["measured_total"]) * batch
    return total


@dataclasses.dataclass(frozen=True)
class BatchSearch:
    fit: int  # largest batch whose bytes fit the budget (0: not even one sample fits)
    used: int  # min(fit, cap): the batch that is run
    capped: bool  # fit > cap
    cap: int
    budget_bytes: int
    bytes_at_used: int
    probes: int  # how many batch sizes were evaluated

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def largest_fitting_batch(total_bytes: Callable[[int], int], budget_bytes: int, cap: int) -> BatchSearch:
    """Largest batch b with total_bytes(b) <= budget_bytes (total_bytes non-decreasing in b).

    Start from budget / bytes(1), then double until a batch does not fit (or already does
    not), then bisect between the last fitting and the first non-fitting batch. The batch that
    is run is capped at `cap` (reported as capped; the uncapped fit is reported too).
    """
    probes = 0
    cache: dict[int, bool] = {}

    def fits(b: int) -> bool:
        nonlocal probes
        if b not in cache:
            probes += 1
            cache[b] = total_bytes(b) <= budget_bytes
        return cache[b]

    if cap < 1:
        raise ValueError(f"cap must be >= 1, got {cap}")
    if not fits(1):
        return BatchSearch(0, 0, False, cap, budget_bytes, 0, probes)
    one = max(total_bytes(1), 1)
    guess = max(1, min(budget_bytes // one, _SEARCH_LIMIT))
    if fits(guess):
        lo, hi = guess, None
        while hi is None and lo < _SEARCH_LIMIT:
            nxt = min(2 * lo, _SEARCH_LIMIT)
            if fits(nxt):
                lo = nxt
            else:
                hi = nxt
        if hi is None:
            hi = lo + 1  # the limit: report it as the fit
    else:
        lo, hi = 1, guess
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    used = min(lo, cap)
    return BatchSearch(lo, used, lo > cap, cap, budget_bytes, int(total_bytes(used)), probes)


def kv_reads_per_token(cfg: ModelConfig, mode: str, prompt_len: int, gen_len: int,
                       bytes_per_value: int) -> dict:
    """Analytic KV bytes read per generated token, per cache, averaged over the continuation.

    Model: each step of a stack loads the valid entries of its cache once (all its layers).
    Feeding token n (n tokens consumed, n = prompt_len+1 .. prompt_len+gen_len):
    * vanilla: every layer reads n entries;
    * PHOTON: for every level d whose unit completes (n % tokens_per_unit(d) == 0), decoder d
      reads its window rows R_d + s (s = n / tokens_per_unit(d) mod C_d, the slot it now
      predicts; s = 0 is a fresh window), and encoder d-1 (d >= 1) reads its units so far
      (global cache), the units of the current meta-context (ring, exact-local), or nothing
      (recgen's lower levels).
    """
    entry = 2 * cfg.kv_heads * cfg.head_width * bytes_per_value
    ns = range(prompt_len + 1, prompt_len + gen_len + 1)
    if cfg.family == "vanilla":
        total = sum(cfg.num_layers * n for n in ns) * entry / gen_len
        return {"by_cache": {"tokens": total}, "total": total}
    levels = cfg.levels
    hier = Hierarchy.of(cfg)
    tok_per = [hier.tokens_per_unit(d) for d in range(len(levels) + 1)]
    kinds = hier.encoder_kinds(mode)
    out = {f"encoder_{i}": 0.0 for i in range(len(levels))}
    out.update({f"decoder_{d}": 0.0 for d in range(len(levels))})
    for n in ns:
        for d, level in enumerate(levels):
            if n % tok_per[d]:
                break  # no higher level completes either
            count = n // tok_per[d]
            out[f"decoder_{d}"] += level.decoder_layers * (level.fanout + count % level.chunk)
            if d >= 1:
                i = d - 1
                if kinds[i] == "global":
                    units = count
                elif kinds[i] == "ring":
                    units = (count - 1) % hier.encoder_block(i) + 1
                else:
                    units = 0
                out[f"encoder_{i}"] += levels[i].encoder_layers * units
        top = len(levels)
        if n % tok_per[top] == 0:  # a finished meta-context: the top encoder steps
            i = top - 1
            out[f"encoder_{i}"] += levels[i].encoder_layers * (n // tok_per[top])
    by_cache = {k: v * entry / gen_len for k, v in out.items()}
    return {"by_cache": by_cache, "total": sum(by_cache.values())}


def device_bytes_in_use() -> int | None:
    """Bytes the first device's allocator holds, or None where the backend does not say (CPU)."""
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # some backends raise instead of returning None
        return None
    if not stats or "bytes_in_use" not in stats:
        return None
    return int(stats["bytes_in_use"])


def device_bytes_limit() -> int | None:
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:
        return None
    if not stats:
        return None
    return int(stats.get("bytes_limit") or 0) or None

