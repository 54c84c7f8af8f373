"""Cached generation for PHOTON (hiergen, recgen, exact-local) and vanilla models.

Public API: generate, generate_stream, GenerationResult, SamplingConfig, agreement, cache_memory_report,
CACHE_AXES. See api.py for the contract, modes.py for what each mode computes.
"""

from photon_jax.generation.agreement import agreement
from photon_jax.generation.api import GenerationResult, generate, generate_stream
from photon_jax.generation.caches import CACHE_AXES, cache_axes
from photon_jax.generation.memory import cache_memory_report
from photon_jax.generation.modes import ALL_MODES, check_mode
from photon_jax.generation.sampling import SamplingConfig

__all__ = ["generate", "generate_stream", "agreement", "cache_memory_report", "GenerationResult", "SamplingConfig",
           "CACHE_AXES", "cache_axes", "ALL_MODES", "check_mode"]
