"""What staggered slots cost: decode-step time of a full slot pool whose rows sit at the same phase of
the meta-context (what the engine's aligned admission keeps) vs rows spread over every phase.

A PHOTON step runs the levels above the tokens only when some row crosses a unit boundary
(generation/photon_runner.py); with rows at all phases some row crosses one at nearly every step,
so every step pays the upper levels. Both runs hold the same number of busy rows, the same
prompt lengths up to the phase offset, and time the engine's own program (one decode step per
call, as serve/engine.py runs it).
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from photon_jax.model.convert import unrolled
from photon_jax.model.hierarchy import Hierarchy
from photon_jax.serve import pool as pool_lib


def layouts(unit: int, slots: int) -> dict[str, list[int]]:
    """Prompt lengths of the busy rows: "aligned" all at one phase of the meta-context `unit` (two lengths, a
    unit apart), "staggered" spread over every phase; base = a short prompt past the first unit."""
    base = unit + 1
    return {"aligned": [base + unit * (i % 2) for i in range(slots)],
            "staggered": [base + (i % unit) for i in range(slots)]}


def fill_pool(programs, prompt_lens, budget):
    """A pool whose row i holds a random prompt of prompt_lens[i] tokens with `budget` tokens to go."""
    spec = programs.spec
    pool = pool_lib.empty_pool(programs.params, spec)
    rng = np.random.default_rng(0)
    knobs = {"seed": [0], "temperature": [0.0], "top_k": [0], "top_p": [1.0]}
    for slot, p in enumerate(prompt_lens):
        source = np.full(spec.slots, -1, np.int32)
        source[slot] = 0
        prompt = [int(x) for x in rng.integers(1, spec.cfg.vocab_size, size=p)]
        pool = programs.insert(pool, [prompt], [p + budget], [min(p + budget, spec.cap)], source,
                               np.zeros(spec.slots, np.int32), knobs)
    return pool


def _time_steps(programs, pool, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        t0 = time.perf_counter()
        pool, view = programs.decode(pool, 1, -1)
        view["count"].block_until_ready()
        out.append(time.perf_counter() - t0)
    return out


def measure_stagger(model_cfg, params, mode: str, slots: int, max_context: int, steps: int = 64,
                    repeats: int = 3) -> dict:
    """Median decode-step ms with aligned rows and with rows at every phase; their ratio."""
    cfg, params = unrolled(model_cfg, params)
    unit = Hierarchy.of(cfg).meta_context
    spec = pool_lib.PoolSpec(cfg, mode, slots, pool_lib.capacity(cfg, max_context))
    programs = pool_lib.Programs(spec, params)
    rows = layouts(unit, slots)
    budget = steps + 1
    assert max(max(v) for v in rows.values()) + budget <= spec.cap, "context too short for the measurement"
    result = {"mode": mode, "slots": slots, "meta_context": unit, "steps": steps}
    samples = {k: [] for k in rows}
    for name, lens in rows.items():  # warm-up: compiles, first touches; and the phases the busy rows are at
        pool = fill_pool(programs, lens, budget)
        result[f"{name}_phases"] = sorted({int(n) % unit for n, a in zip(np.asarray(pool["length"]),
                                                                          np.asarray(pool["active"])) if a})
        _time_steps(programs, pool, 2)
    for _ in range(repeats):  # interleaved, so drifting machine load hits both alike
        for name, lens in rows.items():
            samples[name] += _time_steps(programs, fill_pool(programs, lens, budget), steps)
    for name in rows:
        result[f"{name}_ms_per_step"] = 1e3 * statistics.median(samples[name])
        result[f"{name}_ms_mean"] = 1e3 * statistics.fmean(samples[name])
    result["staggered_over_aligned"] = result["staggered_ms_mean"] / result["aligned_ms_mean"]
    return result
