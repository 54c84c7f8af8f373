"""Cached generation for PHOTON (hiergen, recgen, exact-local) and vanilla models.

    api.py            generate, generate_stream, plan, run_rows, check_mode: the public API
    engine.py         jitted prefill/decode programs per RunSpec, Session (a batch in flight)
    loop.py           the decode loop: sample, record, stop per row, advance the model
    photon_runner.py  PHOTON prefill + per-token cascade for every mode (one runner per family)
    vanilla_runner.py vanilla prefill + decode
    caches.py         KV cache trees, their axes and bytes, memory per sample
    multiquery.py     samples of one prompt sharing its caches
    sampling.py       greedy / temperature / top-k / top-p, one PRNG key per row and position
    agreement.py      recgen (and exact-local) vs exact hiergen on held-out windows
    text.py           text in, text out through a run's tokenizer
"""

from photon_jax.generation.agreement import agreement
from photon_jax.generation.api import (
    ALL_MODES,
    GenerationResult,
    check_mode,
    decode_kernel_sites,
    generate,
    generate_stream,
    plan,
    run_rows,
)
from photon_jax.generation.caches import CACHE_AXES, cache_axes, cache_memory_report
from photon_jax.generation.sampling import SamplingConfig
from photon_jax.generation.text import generate_text

__all__ = ["generate", "generate_stream", "generate_text", "plan", "run_rows", "decode_kernel_sites", "agreement",
           "cache_memory_report", "GenerationResult", "SamplingConfig", "CACHE_AXES", "cache_axes", "ALL_MODES",
           "check_mode"]
