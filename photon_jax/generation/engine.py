"""Jitted prefill and decode programs, compiled once per RunSpec (static shapes + settings)."""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp

from pallas_kernels.dispatch import kernel_sites
from photon_jax.config import ModelConfig
from photon_jax.generation.loop import init_loop, run_loop
from photon_jax.generation.photon_runner import PhotonRunner
from photon_jax.generation.sampling import SamplingConfig
from photon_jax.generation.vanilla_runner import VanillaRunner
from photon_jax.sharding import strip_boxes


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
_decode_jit = jax.jit(_decode, static_argnames=("spec",), donate_argnames=("loop",))
_COMPILED: dict = {}


def clear_compiled() -> None:
    """Drop the compiled generation programs (a long-lived process, e.g. a notebook or a test session,
    that has run many shapes: each CPU executable holds memory maps until it is released)."""
    _COMPILED.clear()


def _compiled(name, fn, spec, *args):
    """AOT-compile once per (program, spec, parameter layout); returns (executable, compiled now?)."""
    layout = tuple((x.shape, str(x.dtype), str(getattr(x, "sharding", ""))) for x in jax.tree.leaves(args[0]))
    key = (name, spec, layout)
    fresh = key not in _COMPILED
    if fresh:
        _COMPILED[key] = fn.lower(*args, spec=spec).compile()
    return _COMPILED[key], fresh


class Session:
    """A batch in flight: prefill at construction, then decode `steps` tokens per call to step().

    The loop state is donated to each decode call (its caches are updated in place on
    accelerators); read it back with np.asarray between calls.
    """

    def __init__(self, spec: RunSpec, params, prompt_bt, prompt_len_b, budget_b, stop_b, row_id_b, forced_bt,
                 seed, eos_id, sampling: SamplingConfig):
        self.spec = spec
        self.params = strip_boxes(params)
        args = (self.params, jnp.asarray(prompt_bt, jnp.int32), jnp.asarray(prompt_len_b, jnp.int32),
                jnp.asarray(budget_b, jnp.int32), jnp.asarray(stop_b, jnp.int32), jnp.asarray(row_id_b, jnp.int32),
                jnp.asarray(forced_bt, jnp.int32))
        self.knobs = (jnp.asarray(seed, jnp.int32), jnp.asarray(eos_id, jnp.int32),
                      jnp.asarray(max(sampling.temperature, 1e-6), jnp.float32),
                      jnp.asarray(sampling.top_k, jnp.int32), jnp.asarray(sampling.top_p, jnp.float32))
        t0 = time.perf_counter()
        # the prefill program does not depend on how tokens are sampled
        start, fresh = _compiled("start", _start_jit, dataclasses.replace(spec, sampling=""), *args)
        t1 = time.perf_counter()
        self.loop = jax.block_until_ready(start(*args))
        t2 = time.perf_counter()
        self.timings = {"compile_s": t1 - t0, "prefill_s": t2 - t1, "decode_s": 0.0, "compiled": fresh}

    def step(self, steps: int):
        dargs = (self.params, self.loop, jnp.asarray(steps, jnp.int32)) + self.knobs
        t0 = time.perf_counter()
        decode, fresh = _compiled("decode", _decode_jit, self.spec, *dargs)
        t1 = time.perf_counter()
        self.loop = jax.block_until_ready(decode(*dargs))
        t2 = time.perf_counter()
        self.timings["compile_s"] += t1 - t0
        self.timings["decode_s"] += t2 - t1
        self.timings["compiled"] |= fresh
        return self.loop

    def decode_kernel_sites(self) -> int:
        """Decode-attention kernel launches in this batch's decode program (pallas_kernels.kernel_sites):
        > 0 proves the kernel path is taken, 0 means every cached attention runs the XLA path."""
        dargs = (self.params, self.loop, jnp.asarray(1, jnp.int32)) + self.knobs
        return kernel_sites(functools.partial(_decode, spec=self.spec), *dargs)

    @property
    def done(self) -> bool:
        return not bool(jnp.any(self.loop["active"]))



def lower_start(spec: RunSpec, *args):
    """The prefill program lowered for abstract arguments (ShapeDtypeStructs that may carry shardings)."""
    return _start_jit.lower(*args, spec=dataclasses.replace(spec, sampling=""))


def lower_decode(spec: RunSpec, *args):
    return _decode_jit.lower(*args, spec=spec)


def abstract_loop(spec: RunSpec, *start_args):
    """The loop state prefill returns, as ShapeDtypeStructs (nothing is computed)."""
    return jax.eval_shape(functools.partial(_start, spec=spec), *start_args)
