"""Exact (out, lse) merging of attention partials, and cascade attention built on it.

Attention over a key set that is the disjoint union of parts equals the
lse-weighted combination of the attention over each part:
    lse = logsumexp_i lse_i,   out = sum_i exp(lse_i - lse) * out_i.
Used for (a) the cache splits of the flash-decoding kernels, (b) caches split
across devices (sequence-sharded caches), (c) cascade attention for multi-sample
generation: a prompt cache shared by n samples is read once per prompt, each
sample's own suffix cache once per sample, and the two results are merged.
"""

from __future__ import annotations

from pallas_kernels.dispatch import decode_attention
from pallas_kernels.reference import merge_partials

__all__ = ["merge_partials", "merge_two", "cascade_decode_attention"]


def merge_two(out_a, lse_a, out_b, lse_b):
    """merge_partials for two parts: (out_a, lse_a) + (out_b, lse_b) -> (out, lse)."""
    return merge_partials([out_a, out_b], [lse_a, lse_b])


def cascade_decode_attention(q_bqhd, shared, suffix, *, num_samples: int, scale=None,
                             attention_fn=None, **attention_kwargs):
    """Decode attention over [shared prompt cache ; per-sample suffix cache], merged exactly.

    q_bqhd: (prompts * num_samples, num_queries, heads, head_dim), samples of a prompt adjacent.
    shared: (k, v, lengths) with k/v (prompts, prompt_cache_len, kv_heads, head_dim): one cache per
            prompt, shared by its num_samples samples; lengths (prompts,).
    suffix: (k, v, lengths) with k/v (prompts * num_samples, suffix_cache_len, kv_heads, head_dim).
    attention_fn: (q, k, v, lengths, scale=..., **kw) -> (out, lse); default dispatch.decode_attention.
    The shared cache is attended once per prompt with the queries of all its samples stacked
    (num_samples * num_queries queries per row), so it is read once, not num_samples times.
    Returns (out_bqhd, lse_bqh) for the batch of samples.
    """
    attention_fn = attention_fn or decode_attention
    bn, nq, h, d = q_bqhd.shape
    k_sh, v_sh, len_sh = shared
    prompts = k_sh.shape[0]
    if prompts * num_samples != bn:
        raise ValueError(f"batch {bn} != prompts {prompts} * num_samples {num_samples}")
    q_shared = q_bqhd.reshape(prompts, num_samples * nq, h, d)
    out_sh, lse_sh = attention_fn(q_shared, k_sh, v_sh, len_sh, scale=scale, **attention_kwargs)
    out_sh = out_sh.reshape(bn, nq, h, d)
    lse_sh = lse_sh.reshape(bn, nq, h)
    k_sf, v_sf, len_sf = suffix
    out_sf, lse_sf = attention_fn(q_bqhd, k_sf, v_sf, len_sf, scale=scale, **attention_kwargs)
    out, lse = merge_two(out_sh, lse_sh, out_sf, lse_sf)
    return out.astype(q_bqhd.dtype), lse
