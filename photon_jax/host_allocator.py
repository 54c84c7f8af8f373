"""glibc malloc settings for CPU runs, so XLA:CPU's per-step buffers are not re-faulted every step.

XLA:CPU allocates the temporary buffer of every executable run (297 MB for the vanilla-tiny train
step) with posix_memalign, from the malloc arena of the worker thread that launches the run. glibc
serves a request that large with mmap (a thread arena cannot hold it; the main arena's mmap
threshold tops out at 32 MB) and returns it with munmap, so each step touches ~72,600 fresh pages
and the kernel faults in and zeroes every one of them: 309 -> 200 ms per vanilla-tiny step on the
2-core benchmark machine once they stay mapped (one interleaved run, docs/performance.md). One arena, no mmap and no
trimming keep the heap's pages mapped from one step to the next; the cost is that the process keeps
its peak heap instead of handing freed memory back to the OS.

`configure()` applies this when the process will run JAX on the CPU, before the CPU backend starts
its threads (a thread keeps the arena it first allocated from). The CLI calls it for the commands
whose hot loop is train steps (train, run, bench train), not for generation or throughput
benchmarks: with one arena, CPU decoding (many small runs) measured 10-20% slower. Training scripts
can call it before their first JAX computation. PHOTON_HOST_ALLOCATOR=system leaves malloc alone.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys

# mallopt parameters (glibc's malloc.h).
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
TRIM_ABOVE = 2**31 - 1  # mallopt takes a C int: hand memory back only above 2 GiB free at the heap top

ACCELERATOR_PLUGINS = ("jax_cuda13_plugin", "jax_cuda12_plugin", "jax_rocm7_plugin", "jax_rocm60_plugin",
                       "libtpu")

_applied: str | None = None


def runs_on_cpu(env=os.environ) -> bool:
    """Whether JAX will pick the CPU: JAX_PLATFORMS says so, or no accelerator plugin is installed."""
    platforms = env.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not any(importlib.util.find_spec(name) is not None for name in ACCELERATOR_PLUGINS)


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 -- glibc only (musl has no mallopt arenas)
        return libc
    except (OSError, AttributeError):
        return None


def _jax_backend_started() -> bool:
    if "jax" not in sys.modules:
        return False
    from jax._src import xla_bridge
    return xla_bridge.backends_are_initialized()


def state() -> str:
    """What this process's malloc runs with, in words (for benchmark reports)."""
    return _applied or "glibc defaults"


def configure() -> str:
    """Apply the settings if they fit this process; returns what was done, in words."""
    global _applied
    if _applied is not None:
        return _applied
    if os.environ.get("PHOTON_HOST_ALLOCATOR", "") == "system":
        return "left alone (PHOTON_HOST_ALLOCATOR=system)"
    if not runs_on_cpu():
        return "left alone (JAX runs on an accelerator)"
    libc = _glibc()
    if libc is None:
        return "left alone (not glibc)"
    if _jax_backend_started():
        return "left alone (the JAX CPU backend already started its threads)"
    ok = all(libc.mallopt(param, value) == 1 for param, value in
             ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_ABOVE)))
    _applied = "one arena, no mmap, trim above 2 GiB" if ok else "mallopt refused a setting"
    return _applied
