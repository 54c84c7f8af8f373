"""Cache memory per sample: analytic (analysis.kv_bytes_per_sample) vs the real cache pytrees.

cache_memory_report(model_cfg, batch, max_len, num_samples=1, prompt_len=None) -> dict

"measured" is read off the ShapeDtypeStructs of the cache trees the generation programs
allocate (caches.py; the same functions build them), divided by the batch: bytes per sample
for a context of max_len tokens. Differences from the analytic count: local decoder caches
hold R + C - 1 rows (the analytic count says R + C), and global caches are sized for
max_len rounded up to a whole meta-context. With num_samples > 1 and a prompt_len, the
"multiquery" entry gives per-sample bytes when the prompt's caches are shared (multiquery.py).
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from photon_jax.analysis import kv_bytes_per_sample, modes_for
from photon_jax.config import ModelConfig
from photon_jax.generation.caches import (capacity, named_cache_bytes, photon_cache_spec, tree_nbytes,
                                          vanilla_cache_spec)
from photon_jax.generation.modes import encoder_block, encoder_kinds


def _multiquery_bytes(cfg: ModelConfig, mode: str, prompt_len: int, max_new: int, n: int) -> dict[str, float]:
    """Per-sample KV bytes with one prompt shared by n samples."""
    per_value = jnp.dtype(cfg.dtype).itemsize
    entry = 2 * cfg.kv_heads * cfg.head_width * per_value
    if cfg.family == "vanilla":
        return {"tokens": cfg.num_layers * entry * (prompt_len / n + max_new)}
    out = {}
    prompt_pad = (prompt_len // cfg.meta_context + 1) * cfg.meta_context
    kinds = encoder_kinds(cfg, mode)
    for i, level in enumerate(cfg.levels):
        per = math.prod(lv.chunk for lv in cfg.levels[: i + 1])
        if kinds[i] == "none":
            units = 0.0
        elif kinds[i] == "ring":
            units = encoder_block(cfg, i)
        elif encoder_block(cfg, i):  # block-local global cache: copied per sample
            units = capacity(cfg, prompt_len + max_new) // per
        else:
            units = prompt_pad // per / n + -(-max_new // per)
        out[f"encoder_{i}"] = level.encoder_layers * entry * units
        out[f"decoder_{i}"] = level.decoder_layers * entry * (level.fanout + level.chunk - 1)
    return out


def cache_memory_report(model_cfg: ModelConfig, batch: int, max_len: int, num_samples: int = 1,
                        prompt_len: int | None = None) -> dict:
    per_value = jnp.dtype(model_cfg.dtype).itemsize
    report = {"batch": batch, "max_len": max_len, "dtype": model_cfg.dtype, "modes": {}}
    for mode in modes_for(model_cfg):
        analytic = kv_bytes_per_sample(model_cfg, max_len, mode, bytes_per_value=per_value)
        if model_cfg.family == "vanilla":
            tree = vanilla_cache_spec(model_cfg, batch, max_len)
        else:
            tree = photon_cache_spec(model_cfg, mode, batch, max_len)
        measured = {k: v // batch for k, v in named_cache_bytes(tree).items()}
        entry = {"analytic": analytic, "measured": measured, "analytic_total": int(sum(analytic.values())),
                 "measured_total": tree_nbytes(tree) // batch}
        if num_samples > 1 and prompt_len:
            mq = _multiquery_bytes(model_cfg, mode, prompt_len, max_len - prompt_len, num_samples)
            entry["multiquery"] = {"num_samples": num_samples, "prompt_len": prompt_len,
                                   "per_sample": {k: int(v) for k, v in mq.items()},
                                   "per_sample_total": int(sum(mq.values()))}
        report["modes"][mode] = entry
    return report
