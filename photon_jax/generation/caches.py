"""KV caches as explicit pytrees: shapes, logical axis names, byte counts, and memory per sample.

Every KV cache is a dict {"k", "v"} of arrays shaped CACHE_AXES =
(layers, batch, cache_seq, kv_heads, head_dim), in the model's compute dtype. A cache
shared by several samples (multi-query, multiquery.py) adds "shared_k"/"shared_v" with
the same axes (batch = prompt groups) and "shared_len" with SHARED_LEN_AXES.

PHOTON cache tree ({"enc": [...], "dec": [...]}, one entry per level, index i = level i+1):
* enc[i]: encoder i's cache. "global": max_len / (C_1...C_{i+1}) units (one per level-(i+1)
  unit of the whole context); "ring": one meta-context of units (exact-local lower levels);
  None: no cache (recgen lower levels).
* dec[i]: the local cache of decoder i: its window of R_i + C_i - 1 rows. It holds the current
  chunk only and is rebuilt from the converter rows at every chunk boundary.
The vanilla tree is {"tokens": {"k", "v"}} with max_len entries.

Lengths are not stored in the caches: they follow from each row's token count (photon_runner.py).

cache_memory_report(model_cfg, batch, max_len, num_samples=1, prompt_len=None) -> dict
compares the analytic count (accounting.kv_bytes_per_sample) with these trees: "measured" is
read off the ShapeDtypeStructs of the caches the generation programs allocate, divided by the
batch. Differences: local decoder caches hold R + C - 1 rows (the analytic count says R + C),
and global caches are sized for max_len rounded up to a whole meta-context. With
num_samples > 1 and a prompt_len, "multiquery" gives per-sample bytes when the prompt's caches
are shared (multiquery.py).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from photon_jax.config import ModelConfig
from photon_jax.model.accounting import kv_bytes_per_sample
from photon_jax.model.hierarchy import Hierarchy, modes_for

CACHE_AXES = ("layers", "batch", "cache_seq", "kv_heads", "head_dim")
SHARED_LEN_AXES = ("layers", "batch")


def kv_spec(cfg: ModelConfig, layers: int, batch: int, length: int) -> dict:
    shape = (layers, batch, length, cfg.kv_heads, cfg.head_width)
    sds = jax.ShapeDtypeStruct(shape, jnp.dtype(cfg.dtype))
    return {"k": sds, "v": sds}


def zeros_like_spec(tree):
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), tree)


def kv_zeros(cfg: ModelConfig, layers: int, batch: int, length: int) -> dict:
    return zeros_like_spec(kv_spec(cfg, layers, batch, length))


def photon_cache_spec(cfg: ModelConfig, mode: str, batch: int, max_len: int) -> dict:
    """ShapeDtypeStructs of the PHOTON cache tree for `batch` rows of up to max_len tokens."""
    hier = Hierarchy.of(cfg)
    cap = hier.capacity(max_len)
    enc, dec = [], []
    for i, level in enumerate(cfg.levels):
        units = hier.cached_units(i, mode, cap)
        enc.append(kv_spec(cfg, level.encoder_layers, batch, units) if units else None)
        dec.append(kv_spec(cfg, level.decoder_layers, batch, hier.windows[i]))
    return {"enc": enc, "dec": dec}


def vanilla_cache_spec(cfg: ModelConfig, batch: int, max_len: int) -> dict:
    return {"tokens": kv_spec(cfg, cfg.num_layers, batch, max_len)}


def tree_nbytes(tree) -> int:
    return int(sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def cache_axes(tree):
    """The logical axis names of every leaf of a cache tree (for the sharding rules)."""
    def axes(x):
        return CACHE_AXES if len(x.shape) == len(CACHE_AXES) else SHARED_LEN_AXES
    return jax.tree.map(axes, tree)


def named_cache_bytes(tree: dict) -> dict[str, int]:
    """Bytes per cache, named like accounting.kv_bytes_per_sample (encoder_i, decoder_i, tokens)."""
    out = {}
    if "tokens" in tree:
        out["tokens"] = tree_nbytes(tree["tokens"])
        return out
    for i, c in enumerate(tree["enc"]):
        out[f"encoder_{i}"] = tree_nbytes(c) if c is not None else 0
    for i, c in enumerate(tree["dec"]):
        out[f"decoder_{i}"] = tree_nbytes(c)
    return out


def _multiquery_bytes(cfg: ModelConfig, mode: str, prompt_len: int, max_new: int, n: int) -> dict[str, float]:
    """Per-sample KV bytes with one prompt shared by n samples."""
    per_value = jnp.dtype(cfg.dtype).itemsize
    entry = 2 * cfg.kv_heads * cfg.head_width * per_value
    if cfg.family == "vanilla":
        return {"tokens": cfg.num_layers * entry * (prompt_len / n + max_new)}
    out = {}
    hier = Hierarchy.of(cfg)
    prompt_pad = hier.prompt_pad(prompt_len)
    kinds = hier.encoder_kinds(mode)
    for i, level in enumerate(cfg.levels):
        per = hier.tokens_per_unit(i + 1)
        if kinds[i] != "global" or hier.encoder_block(i):  # rings and block-local caches: copied per sample
            units = hier.cached_units(i, mode, hier.capacity(prompt_len + max_new))
        else:
            units = prompt_pad // per / n + -(-max_new // per)
        out[f"encoder_{i}"] = level.encoder_layers * entry * units
        out[f"decoder_{i}"] = level.decoder_layers * entry * hier.windows[i]
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
