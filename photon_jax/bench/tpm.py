"""`bench tpm`: throughput per memory (TPM) in the paper's PF and DE regimes (docs/method.md 9).

For every model, generation mode and regime (prompt P tokens, G generated):
1. per-sample KV memory for a context of P + G tokens: analytic, measured (the cache trees
   the generation code allocates) and, where the backend reports memory, the device slope;
2. the largest batch whose caches fit the memory budget (memory.largest_fitting_batch),
   run at min(that, --max-batch);
3. warm timing at that batch (median of --repeats): time to first token (prefill latency),
   end-to-end generated tokens/s;
4. TPM = throughput (K tokens/s) / per-sample memory (GiB), and the ratios against the
   first vanilla model of the same run.
"""

from __future__ import annotations

import gc
from typing import Callable

from photon_jax.bench import memory, runs
from photon_jax.bench.models import BenchModel, dtype_bytes, random_params, reference_model
from photon_jax.errors import UserError
from photon_jax.model.accounting import count_params
from photon_jax.reports.output import GIB, envelope

REGIMES = {"pf": (2048, 128), "de": (128, 2048)}  # the paper's (prompt, generated)


def parse_regime_value(text: str, flag: str) -> tuple[int, int]:
    """'256/32' -> (256, 32)."""
    parts = text.split("/")
    try:
        p, g = (int(x) for x in parts)
    except ValueError:
        raise UserError(f"{flag} {text!r} must be PROMPT/GENERATED, e.g. 256/32") from None
    if p < 1 or g < 1:
        raise UserError(f"{flag} {text!r}: prompt and generated lengths must be >= 1")
    return p, g


def resolve_regimes(regime: str, prompt_len: int | None = None, gen_len: int | None = None,
                    pf: str | None = None, de: str | None = None) -> dict[str, tuple[int, int]]:
    if regime not in ("pf", "de", "both"):
        raise UserError(f"regime must be pf, de or both, got {regime!r}")
    base = dict(REGIMES)
    if pf:
        base["pf"] = parse_regime_value(pf, "--pf")
    if de:
        base["de"] = parse_regime_value(de, "--de")
    names = ["pf", "de"] if regime == "both" else [regime]
    if prompt_len is not None or gen_len is not None:
        if len(names) > 1:
            raise UserError("--prompt-len/--gen-len set one regime; with --regime both use --pf P/G and --de P/G")
        for value, flag in ((prompt_len, "--prompt-len"), (gen_len, "--gen-len")):
            if value is not None and value < 1:
                raise UserError(f"{flag} must be >= 1, got {value}")
        p, g = base[names[0]]
        base[names[0]] = (prompt_len or p, gen_len or g)
    return {n: base[n] for n in names}


def parse_perplexities(text: str | None, names: list[str]) -> dict[str, float]:
    out = {}
    if not text:
        return out
    for item in text.split(","):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise UserError(f"--perplexities item {item!r} must be name=ppl")
        if name not in names:
            raise UserError(f"--perplexities names model {name!r}, which is not in --models")
        try:
            ppl = float(value)
        except ValueError:
            raise UserError(f"--perplexities {name}: {value!r} is not a number") from None
        if not ppl > 0:
            raise UserError(f"--perplexities {name}: perplexity must be > 0, got {value}")
        out[name] = ppl
    return out


def _tpm(throughput_tokens_per_s: float, bytes_per_sample: float | None) -> float | None:
    """K tokens/s per GiB of per-sample memory."""
    if not bytes_per_sample or bytes_per_sample <= 0:
        return None
    return (throughput_tokens_per_s / 1e3) / (bytes_per_sample / GIB)


def _ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def plan_batches(models: list[BenchModel], modes: dict[str, list[str]], regimes: dict[str, tuple[int, int]],
                 budget_bytes: int, max_batch: int) -> dict:
    """(model, mode, regime) -> (per-sample KV report, batch search); fails early if nothing fits."""
    plans = {}
    for m in models:
        for mode in modes[m.name]:
            for regime, (p, g) in regimes.items():
                kv = memory.per_sample_kv(m.model, mode, p + g)
                search = memory.largest_fitting_batch(memory.cache_bytes_fn(m.model, mode, p + g), budget_bytes,
                                                      max_batch)
                if search.fit == 0:
                    raise UserError(f"{m.name} {mode} {regime.upper()}: one sample's KV cache "
                                    f"({kv['measured_total'] / GIB:.4g} GiB) exceeds the memory budget "
                                    f"({budget_bytes / GIB:.4g} GiB)")
                plans[(m.name, mode, regime)] = (kv, search)
    return plans


def run_tpm(models: list[BenchModel], modes: dict[str, list[str]], regimes: dict[str, tuple[int, int]],
            budget_bytes: int, max_batch: int, repeats: int, perplexities: dict[str, float] | None = None,
            device_slope: bool = True, overrides: list[str] = (), interleave: bool = False,
            log: Callable[[str], None] = print) -> dict:
    """Every (model, regime, mode) cell warmed up, then timed `repeats` times. interleave=True times the
    cells round-robin (every cell once per round, all models' weights held at once), so a slow spell
    of the machine falls on every cell alike; otherwise one model after the other."""
    perplexities = perplexities or {}
    plans = plan_batches(models, modes, regimes, budget_bytes, max_batch)
    reference = reference_model(models)
    cells = [(m, regime, mode) for m in models for regime in regimes for mode in modes[m.name]]
    params, warm, samples = {}, {}, {}

    def warm_up(m: BenchModel, regime: str, mode: str) -> None:
        p, g = regimes[regime]
        search = plans[(m.name, mode, regime)][1]
        log(f"[tpm] {m.name} {mode} {regime.upper()} {p}/{g}: batch {search.used}"
            + (f" (budget fits {search.fit}, capped by --max-batch {max_batch})" if search.capped else ""))
        prompts, allocated = runs.warm_generation(m.model, params[m.name], mode, search.used, p, g)
        slope = None
        if device_slope and allocated["device_bytes_held"] is not None:
            slope = runs.device_slope(m.model, params[m.name], mode, p, g, search.used,
                                      allocated["device_bytes_held"])
        warm[(m.name, regime, mode)] = (prompts, allocated, slope)
        samples[(m.name, regime, mode)] = []

    def time_once(m: BenchModel, regime: str, mode: str) -> None:
        prompts = warm[(m.name, regime, mode)][0]
        samples[(m.name, regime, mode)].append(
            runs.timed_sample(m.model, params[m.name], mode, prompts, regimes[regime][1]))

    if interleave:
        params.update({m.name: random_params(m.model) for m in models})
        for cell in cells:
            warm_up(*cell)
        for round_index in range(repeats):
            log(f"[tpm] round {round_index + 1}/{repeats} over {len(cells)} cells")
            for cell in cells:
                time_once(*cell)
    else:
        for m in models:
            params[m.name] = random_params(m.model)
            for cell in [c for c in cells if c[0] is m]:
                warm_up(*cell)
                for _ in range(repeats):
                    time_once(*cell)
            del params[m.name]
            gc.collect()
    results = [_row(m, regime, mode, regimes[regime], plans[(m.name, mode, regime)], warm[(m.name, regime, mode)],
                    runs.timing_summary(samples[(m.name, regime, mode)]), perplexities.get(m.name))
               for m, regime, mode in cells]
    params.clear()
    gc.collect()
    _add_ratios(results, reference)
    notes = []
    capped = [r for r in results if r["batch"]["capped"]]
    if capped:
        notes.append(f"{len(capped)} of {len(results)} runs used batch {max_batch} (the --max-batch cap) although "
                     f"the budget fits more (batch.fit); throughput at a larger batch may be higher")
    if reference is None:
        notes.append("no vanilla model in --models: no ratios")
    settings = {"regimes": {k: {"prompt_len": p, "gen_len": g} for k, (p, g) in regimes.items()},
                "memory_budget_bytes": budget_bytes, "memory_budget_gib": budget_bytes / GIB,
                "max_batch": max_batch, "repeats": repeats, "models": [m.name for m in models],
                "timing_order": "interleaved: every cell once per round" if interleave else "model by model",
                "modes": modes, "overrides": list(overrides), "sampling": "greedy, no EOS",
                "tpm_unit": "K generated tokens/s per GiB of per-sample KV memory",
                "throughput": "generated tokens / (prefill_s + decode_s) at the batch run",
                "memory_basis": "measured (cache trees allocated by the generation code); "
                                "tpm.analytic and tpm.device use the other figures"}
    return envelope("tpm", settings, reference, results, notes)


def _row(m: BenchModel, regime: str, mode: str, lengths: tuple[int, int], plan, warmed, timing: dict,
         perplexity: float | None) -> dict:
    """One result row: memory (analytic, measured, allocated, device slope), timing, TPM."""
    cfg, (p, g), (kv, search), (_, allocated, slope) = m.model, lengths, plan, warmed
    kv = dict(kv)
    kv["allocated"] = {k: v // allocated["batch"] for k, v in allocated["caches"].items()}
    kv["allocated_total"] = allocated["caches_total"] // allocated["batch"]
    kv["state_total"] = allocated["state_total"] // allocated["batch"]
    kv["device"] = slope
    kv["device_slope"] = slope["bytes_per_sample"] if slope else None
    thr = timing["throughput_tokens_per_s"]
    return {"model": m.name, "family": m.family, "mode": mode, "regime": regime, "prompt_len": p, "gen_len": g,
            "params": count_params(cfg), "dtype": cfg.dtype, "batch": search.to_dict(),
            "attention": allocated["attention"], "kv_bytes_per_sample": kv, "timing": timing,
            "ttft_s": timing["ttft_s"], "throughput_k_tokens_per_s": thr / 1e3,
            "decode_k_tokens_per_s": timing["decode_tokens_per_s"] / 1e3,
            "tpm": {"measured": _tpm(thr, kv["measured_total"]), "analytic": _tpm(thr, kv["analytic_total"]),
                    "device": _tpm(thr, kv["device_slope"])},
            "kv_read_bytes_per_token": memory.kv_reads_per_token(cfg, mode, p, g, dtype_bytes(cfg)),
            "vs_reference": None, "perplexity": perplexity}


def _add_ratios(results: list[dict], reference: str | None) -> None:
    """vs_reference: this row against the reference model's row of the same regime."""
    if reference is None:
        return
    base = {r["regime"]: r for r in results if r["model"] == reference}
    for r in results:
        ref = base.get(r["regime"])
        if ref is None:
            continue
        kv, kv_ref = r["kv_bytes_per_sample"], ref["kv_bytes_per_sample"]
        r["vs_reference"] = {
            "reference": reference,
            "tpm_ratio": _ratio(r["tpm"]["measured"], ref["tpm"]["measured"]),
            "tpm_ratio_analytic": _ratio(r["tpm"]["analytic"], ref["tpm"]["analytic"]),
            "throughput_ratio": _ratio(r["throughput_k_tokens_per_s"], ref["throughput_k_tokens_per_s"]),
            "memory_reduction": _ratio(kv_ref["measured_total"], kv["measured_total"]),
            "memory_reduction_analytic": _ratio(kv_ref["analytic_total"], kv["analytic_total"]),
            "kv_read_reduction": _ratio(ref["kv_read_bytes_per_token"]["total"], r["kv_read_bytes_per_token"]["total"]),
            "ttft_ratio": _ratio(r["ttft_s"], ref["ttft_s"]),
        }
