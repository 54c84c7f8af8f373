"""KV caches as explicit pytrees, their shapes, logical axis names and byte counts.

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

Lengths are not stored in the caches: they follow from each row's token count (hiergen.py).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from photon_jax.config import ModelConfig
from photon_jax.generation.modes import encoder_block, encoder_kinds

CACHE_AXES = ("layers", "batch", "cache_seq", "kv_heads", "head_dim")
SHARED_LEN_AXES = ("layers", "batch")


def round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def kv_spec(cfg: ModelConfig, layers: int, batch: int, length: int) -> dict:
    shape = (layers, batch, length, cfg.kv_heads, cfg.head_width)
    sds = jax.ShapeDtypeStruct(shape, jnp.dtype(cfg.dtype))
    return {"k": sds, "v": sds}


def zeros_like_spec(tree):
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), tree)


def kv_zeros(cfg: ModelConfig, layers: int, batch: int, length: int) -> dict:
    return zeros_like_spec(kv_spec(cfg, layers, batch, length))


def capacity(cfg: ModelConfig, max_len: int) -> int:
    """Token capacity of the caches: max_len rounded up to a whole meta-context."""
    return round_up(max_len, cfg.meta_context)


def photon_cache_spec(cfg: ModelConfig, mode: str, batch: int, max_len: int) -> dict:
    """ShapeDtypeStructs of the PHOTON cache tree for `batch` rows of up to max_len tokens."""
    cap = capacity(cfg, max_len)
    kinds = encoder_kinds(cfg, mode)
    enc, dec = [], []
    units = cap
    for i, level in enumerate(cfg.levels):
        units //= level.chunk
        if kinds[i] == "global":
            enc.append(kv_spec(cfg, level.encoder_layers, batch, units))
        elif kinds[i] == "ring":
            enc.append(kv_spec(cfg, level.encoder_layers, batch, encoder_block(cfg, i)))
        else:
            enc.append(None)
        dec.append(kv_spec(cfg, level.decoder_layers, batch, level.fanout + level.chunk - 1))
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
    """Bytes per cache, named like analysis.kv_bytes_per_sample (encoder_i, decoder_i, tokens)."""
    out = {}
    if "tokens" in tree:
        out["tokens"] = tree_nbytes(tree["tokens"])
        return out
    for i, c in enumerate(tree["enc"]):
        out[f"encoder_{i}"] = tree_nbytes(c) if c is not None else 0
    for i, c in enumerate(tree["dec"]):
        out[f"decoder_{i}"] = tree_nbytes(c)
    return out
