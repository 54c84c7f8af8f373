"""Wall-clock helpers: perf_counter around block_until_ready, medians over repeats."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import jax


def timed(fn: Callable, *args, **kwargs) -> tuple[object, float]:
    """(result, seconds) of fn(*args), waiting for every array it returns."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args, **kwargs))
    return out, time.perf_counter() - start


def median(values) -> float:
    values = [float(v) for v in values]
    return statistics.median(values) if values else float("nan")


def summarize(samples: list[dict], keys: tuple[str, ...]) -> dict:
    """{key: median over samples} plus the raw lists under "samples"."""
    out = {k: median(s[k] for s in samples) for k in keys}
    out["samples"] = {k: [float(s[k]) for s in samples] for k in keys}
    out["repeats"] = len(samples)
    return out
