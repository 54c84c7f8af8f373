"""Jitted prefill and decode programs, compiled once per RunSpec (static shapes + settings)."""

from __future__ import annotations

import dataclasses
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

from photon_jax.config import ModelConfig
from photon_jax.generation import multiquery
from photon_jax.generation.hiergen import Cascade
from photon_jax.generation.loop import init_loop, run_loop
from photon_jax.generation.photon_ops import Hier
from photon_jax.generation.prefill import prefill as photon_prefill
from photon_jax.generation.sampling import SamplingConfig, sampling_kind
from photon_jax.generation.vanilla_decode import VanillaDecoder


@dataclasses.dataclass(frozen=True)
class RunSpec:
    cfg: ModelConfig
    mode: str
    groups: int  # prefill batch (distinct prompt rows)
    samples: int  # rows per prefill row in the loop (shared prompt caches when > 1)
    prompt_pad: int  # padded prompt length fed to prefill
    cap: int  # token capacity of the loop (and of unshared caches)
    max_new: int  # sizes the per-sample suffix caches when shared
    sampling: str  # sampling.sampling_kind: greedy | plain | filtered (values are traced)
    record_logits: bool

    @property
    def rows(self) -> int:
        return self.groups * self.samples


class PhotonRunner:
    def __init__(self, cfg, mode):
        self.hier = Hier(cfg, mode)
        self.cascade = Cascade(self.hier)

    def prefill(self, params, tokens, prompt_len, cap):
        return photon_prefill(self.hier, params, tokens, prompt_len, cap)

    def advance(self, params, st, tokens, fed, adv):
        return self.cascade.advance(params, st, tokens, fed, adv)

    def share(self, st, prompt_len, spec: RunSpec):
        h, n = self.hier, spec.samples
        enc, base = [], []
        for i, cache in enumerate(st["enc"]):
            per = h.tok_per[i + 1]
            if cache is not None and h.kinds[i] == "global" and not h.block[i]:
                count = prompt_len // per
                enc.append(multiquery.share_cache(cache, spec.prompt_pad // per, count, n, -(-spec.max_new // per)))
                base.append(jnp.repeat(count, n))
            else:
                enc.append(None if cache is None else multiquery.repeat_rows(cache, n, axis=1))
                base.append(None)
        return {"enc": enc, "enc_base": base, "dec": multiquery.repeat_rows(st["dec"], n, axis=1),
                "xhat": multiquery.repeat_rows(st["xhat"], n), "buf": multiquery.repeat_rows(st["buf"], n)}


class VanillaRunner(VanillaDecoder):
    def share(self, st, prompt_len, spec: RunSpec):
        n = spec.samples
        return {"tokens": multiquery.share_cache(st["tokens"], spec.prompt_pad, prompt_len, n, spec.max_new),
                "base": jnp.repeat(prompt_len, n)}


def make_runner(cfg: ModelConfig, mode: str):
    return VanillaRunner(cfg) if cfg.family == "vanilla" else PhotonRunner(cfg, mode)


def _start(params, prompt_bt, prompt_len_b, budget_b, stop_b, row_id_b, forced_bt, spec: RunSpec):
    runner = make_runner(spec.cfg, spec.mode)
    state, logits = runner.prefill(params, prompt_bt, prompt_len_b, spec.cap)
    n = spec.samples
    if n > 1:
        state = runner.share(state, prompt_len_b, spec)
        logits = jnp.repeat(logits, n, axis=0)
    tokens = jnp.zeros((spec.rows, spec.cap), jnp.int32)
    tokens = tokens.at[:, : spec.prompt_pad].set(jnp.repeat(prompt_bt, n, axis=0))
    return init_loop(tokens, jnp.repeat(prompt_len_b, n), budget_b, stop_b, row_id_b, logits, state, forced_bt,
                     spec.record_logits)


def _decode(params, loop, steps, seed, eos_id, temperature, top_k, top_p, spec: RunSpec):
    return run_loop(make_runner(spec.cfg, spec.mode), params, loop, steps, seed, eos_id, spec.sampling,
                    temperature, top_k, top_p)


_start_jit = jax.jit(_start, static_argnames=("spec",))
_decode_jit = jax.jit(_decode, static_argnames=("spec",))
_COMPILED: dict = {}


def _compiled(name, fn, spec, *args):
    key = (name, spec, tuple((x.shape, str(x.dtype)) for x in jax.tree.leaves(args[0])))
    fresh = key not in _COMPILED
    if fresh:
        _COMPILED[key] = fn.lower(*args, spec=spec).compile()
    return _COMPILED[key], fresh


def run(spec: RunSpec, params, prompt_bt, prompt_len_b, budget_b, stop_b, row_id_b, forced_bt, steps, seed,
        eos_id, sampling: SamplingConfig):
    """Prefill + decode; returns (final loop state as numpy-ready arrays, timings)."""
    params = nn.unbox(params)
    args = (params, jnp.asarray(prompt_bt, jnp.int32), jnp.asarray(prompt_len_b, jnp.int32),
            jnp.asarray(budget_b, jnp.int32), jnp.asarray(stop_b, jnp.int32), jnp.asarray(row_id_b, jnp.int32),
            jnp.asarray(forced_bt, jnp.int32))
    t0 = time.perf_counter()
    # the prefill program does not depend on how tokens are sampled
    start, fresh_start = _compiled("start", _start_jit, dataclasses.replace(spec, sampling=""), *args)
    t1 = time.perf_counter()
    loop = jax.block_until_ready(start(*args))
    t2 = time.perf_counter()
    dargs = (params, loop, jnp.asarray(steps, jnp.int32), jnp.asarray(seed, jnp.int32),
             jnp.asarray(eos_id, jnp.int32), jnp.asarray(max(sampling.temperature, 1e-6), jnp.float32),
             jnp.asarray(sampling.top_k, jnp.int32), jnp.asarray(sampling.top_p, jnp.float32))
    decode, fresh_decode = _compiled("decode", _decode_jit, spec, *dargs)
    t3 = time.perf_counter()
    loop = jax.block_until_ready(decode(*dargs))
    t4 = time.perf_counter()
    timings = {"compile_s": (t1 - t0) + (t3 - t2), "prefill_s": t2 - t1, "decode_s": t4 - t3,
               "compiled": bool(fresh_start or fresh_decode)}
    return loop, timings
