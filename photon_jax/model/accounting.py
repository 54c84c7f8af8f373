"""Model accounting: parameter counts (from the real init), training FLOPs per token, KV-cache bytes.

Parameter counts come from jax.eval_shape over the actual Flax init (no arrays are
allocated), so they count exactly what the model has. FLOPs and KV bytes are
analytic, per the stack shapes each family runs (docs/method.md 7 and 9).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from photon_jax.config import ModelConfig
from photon_jax.model import build_model
from photon_jax.model.hierarchy import Hierarchy, modes_for
from photon_jax.sharding import strip_boxes


def abstract_params(cfg: ModelConfig, seq_len: int | None = None):
    """Parameter ShapeDtypeStructs (boxed with logical axis metadata) without allocating."""
    seq_len = seq_len or 2 * cfg.meta_context * max(2, cfg.meta_context)
    tokens = jax.ShapeDtypeStruct((1, seq_len), jnp.int32)
    model = build_model(cfg)
    return jax.eval_shape(lambda t: model.init(jax.random.PRNGKey(0), t), tokens)["params"]


def param_breakdown(cfg: ModelConfig) -> dict[str, int]:
    """Top-level module name -> parameter count."""
    params = strip_boxes(abstract_params(cfg))
    return {name: int(sum(math.prod(x.shape) for x in jax.tree.leaves(sub))) for name, sub in params.items()}


def count_params(cfg: ModelConfig) -> int:
    return sum(param_breakdown(cfg).values())


# ------------------------------------------------------------------ FLOPs

def _layer_matmul_flops(m: ModelConfig) -> float:
    """Forward matmul FLOPs of one block at one position (2 per multiply-add)."""
    d, hd = m.width, m.head_width
    attn_proj = d * hd * (2 * m.num_heads + 2 * m.kv_heads)
    mlp = 3 * d * m.ffn_width
    return 2.0 * (attn_proj + mlp)


def _attention_flops(m: ModelConfig, seq: int) -> float:
    """Forward QK^T + AV FLOPs summed over a causal sequence of `seq` positions (mean (seq+1)/2 keys)."""
    return 2.0 * 2.0 * m.num_heads * m.head_width * seq * (seq + 1) / 2.0


def _stack_flops(m: ModelConfig, layers: int, sequences: float, seq: int, block: int = 0) -> float:
    """Forward FLOPs of a stack run on `sequences` independent sequences of length `seq`."""
    attn_seq = block or seq
    attention = _attention_flops(m, attn_seq) * (seq / attn_seq)
    return sequences * layers * (seq * _layer_matmul_flops(m) + attention)


def forward_flops_per_token(m: ModelConfig, seq_len: int) -> float:
    """Forward FLOPs per token of a length-seq_len training sequence (embedding lookups are free)."""
    head = 2.0 * m.width * m.vocab_size
    if m.family == "vanilla":
        return _stack_flops(m, m.num_layers, 1, seq_len) / seq_len + head
    hier = Hierarchy.of(m)
    total = head * seq_len
    in_width = m.embed_width
    for i, level in enumerate(m.levels):
        units = seq_len // hier.tokens_per_unit(i + 1)
        if m.chunker_kind(i) == "norm_linear":
            total += units * 2.0 * level.chunk * in_width * m.width
        in_width = m.width
        total += _stack_flops(m, level.encoder_layers, 1, units, hier.encoder_block(i))
        # decoder i: one window of R + C - 1 rows per level-(i+1) unit; C passes when self-fed (variant C)
        passes = level.chunk if hier.self_fed(i) else 1
        total += passes * _stack_flops(m, level.decoder_layers, units, hier.windows[i])
        total += units * 2.0 * m.width * level.fanout * m.width  # converter
    return total / seq_len


def train_flops_per_token(m: ModelConfig, seq_len: int) -> float:
    """Forward + backward (backward = 2x forward), rematerialisation not counted (model FLOPs)."""
    return 3.0 * forward_flops_per_token(m, seq_len)


# ------------------------------------------------------------------ KV cache

def kv_bytes_per_sample(m: ModelConfig, context: int, mode: str, bytes_per_value: int = 2) -> dict[str, int]:
    """Analytic KV-cache bytes per sample for a context of `context` tokens, per cache.

    Modes: vanilla -> "vanilla"; photon -> "hiergen" (every encoder level + local decoder caches),
    "recgen" (top encoder level + local decoder caches), "exact-local" (top level in full, lower
    levels bounded by one meta-context, needs block_local_lower).
    """
    per_entry = 2 * m.kv_heads * m.head_width * bytes_per_value  # K and V
    if m.family == "vanilla":
        return {"tokens": m.num_layers * context * per_entry}
    hier = Hierarchy.of(m)
    out = {}
    for i, level in enumerate(m.levels):
        out[f"encoder_{i}"] = level.encoder_layers * hier.cached_units(i, mode, context) * per_entry
        out[f"decoder_{i}"] = level.decoder_layers * (level.fanout + level.chunk) * per_entry
    return out


def report(m: ModelConfig, seq_len: int, context: int) -> dict:
    breakdown = param_breakdown(m)
    total = sum(breakdown.values())
    kv = {mode: kv_bytes_per_sample(m, context, mode) for mode in modes_for(m)}
    return {
        "total_params": total,
        "breakdown": breakdown,
        "train_flops_per_token": train_flops_per_token(m, seq_len),
        "seq_len": seq_len,
        "kv_context": context,
        "kv_bytes_per_sample": {mode: int(np.sum(list(v.values()))) for mode, v in kv.items()},
        "kv_bytes_by_cache": kv,
    }
