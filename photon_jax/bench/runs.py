"""Timed generation runs, and the bytes of the cache state a real run allocates.

Timing goes through the public generation.generate (greedy, no EOS: every row generates
exactly gen_len tokens). Its timings split compile, prefill and decode; the first call of a
shape compiles and is only a warm-up. Per run:
  ttft_s      prefill latency at that batch (the prompt pass that yields the first logits)
  throughput  generated tokens / (prefill_s + decode_s): end to end, as in the paper (PF is
              slower than DE because its long prompt is part of the cost)
  decode_tokens_per_s  generated tokens / decode_s

The warm-up run goes through generation.api.run_rows, which returns the final model state
still on the device: its cache arrays are the "allocated" bytes (equal to
generation.caches' measured figure, tests/test_bench.py), and where the backend reports
memory (GPU) the device bytes held by that state give the device-memory slope over batch.
"""

from __future__ import annotations

import gc

import jax

from photon_jax.bench.memory import device_bytes_in_use
from photon_jax.bench.models import random_prompts
from photon_jax.bench.timing import summarize
from photon_jax.generation import generate, plan
from photon_jax.generation.api import start_session
from photon_jax.generation.caches import named_cache_bytes, tree_nbytes
from photon_jax.generation.sampling import GREEDY

TIMING_KEYS = ("prefill_s", "decode_s", "total_s", "throughput_tokens_per_s", "decode_tokens_per_s")


def allocated_state(cfg, params, mode: str, prompts: list[list[int]], gen_len: int) -> dict:
    """Run once through the generation API's session (compiling as generate would), size the state it
    returns, and count the decode-attention kernel sites of its decode program (which path ran)."""
    gc.collect()
    before = device_bytes_in_use()
    mode, prompts, sampling = plan(cfg, mode, prompts, gen_len, GREEDY, None, 1, None)
    session, _ = start_session(cfg, params, mode, prompts, gen_len, sampling, None, 0)
    attention = {"impl": cfg.attention_impl, "kernel_sites": session.decode_kernel_sites()}
    attention["path"] = "pallas" if attention["kernel_sites"] else "xla"
    session.step(gen_len)
    timings = session.timings
    state = jax.block_until_ready(session.loop["model"])
    del session  # the loop state (tokens, logits) would keep its device buffers alive
    gc.collect()
    after = device_bytes_in_use()
    caches = named_cache_bytes(state)
    result = {"batch": len(prompts), "caches": caches, "caches_total": sum(caches.values()),
              "state_total": tree_nbytes(state),
              "device_bytes_held": None if before is None or after is None else after - before,
              "compile_s": timings.get("compile_s"), "attention": attention}
    del state
    gc.collect()
    return result


def warm_generation(cfg, params, mode: str, batch: int, prompt_len: int, gen_len: int,
                    seed: int = 0) -> tuple[list[list[int]], dict]:
    """(the prompts, the allocated-state report of a first run that also compiles every program)."""
    prompts = random_prompts(cfg.vocab_size, batch, prompt_len, seed)
    return prompts, allocated_state(cfg, params, mode, prompts, gen_len)


def timed_sample(cfg, params, mode: str, prompts: list[list[int]], gen_len: int) -> dict:
    """One warm, greedy generation: its prefill and decode seconds and throughputs."""
    t = generate(cfg, params, prompts, mode=mode, max_new_tokens=gen_len, sampling=GREEDY).timings
    n = t["generated_tokens"]
    total = t["prefill_s"] + t["decode_s"]
    return {"prefill_s": t["prefill_s"], "decode_s": t["decode_s"], "total_s": total,
            "throughput_tokens_per_s": n / total if total > 0 else float("nan"),
            "decode_tokens_per_s": n / t["decode_s"] if t["decode_s"] > 0 else float("nan"),
            "compiled": bool(t.get("compiled", False)), "generated_tokens": n}


def timing_summary(samples: list[dict]) -> dict:
    """Medians over warm samples, time to first token, and whether any sample compiled (should not)."""
    summary = summarize(samples, TIMING_KEYS)
    summary["ttft_s"] = summary["prefill_s"]
    summary["generated_tokens"] = samples[-1]["generated_tokens"] if samples else 0
    summary["recompiled"] = any(s["compiled"] for s in samples)
    return summary


def timed_generation(cfg, params, mode: str, batch: int, prompt_len: int, gen_len: int, repeats: int,
                     seed: int = 0) -> tuple[dict, dict | None]:
    """(timing summary over `repeats` warm runs, allocated-state report of the warm-up run)."""
    prompts, allocated = warm_generation(cfg, params, mode, batch, prompt_len, gen_len, seed)
    samples = [timed_sample(cfg, params, mode, prompts, gen_len) for _ in range(repeats)]
    return timing_summary(samples), allocated


def device_slope(cfg, params, mode: str, prompt_len: int, gen_len: int, batch_hi: int,
                 held_hi: int | None) -> dict | None:
    """Slope of device bytes held by the run state over batch size, from batch_hi and batch_hi // 2.

    None where the backend does not report memory (CPU). With batch_hi == 1 the slope is the
    bytes held at batch 1 (no intercept can be separated).
    """
    if held_hi is None:
        return None
    if batch_hi < 2:
        return {"batches": [batch_hi], "bytes_held": [held_hi], "bytes_per_sample": float(held_hi)}
    lo = batch_hi // 2
    rep = allocated_state(cfg, params, mode, random_prompts(cfg.vocab_size, lo, prompt_len, 1), gen_len)
    if rep["device_bytes_held"] is None:
        return None
    held_lo = rep["device_bytes_held"]
    return {"batches": [lo, batch_hi], "bytes_held": [held_lo, held_hi],
            "bytes_per_sample": (held_hi - held_lo) / (batch_hi - lo)}
