"""Pure-jnp references for the decode-attention kernels.

Conventions (shared by every kernel in this package):
  q_bqhd:   (batch, num_queries, heads, head_dim)      queries of one decode step
  k_bskd:   (batch, cache_len, kv_heads, head_dim)     preallocated key cache
  v_bskd:   (batch, cache_len, kv_heads, head_dim)     preallocated value cache
  lengths_b:(batch,) int                               end of each row's readable window
  starts_b: (batch,) int, optional                     start of the window (default 0): a row reads
                                                       cache slots [start, end), e.g. a block-local
                                                       cache whose block starts past slot 0
Grouped-query attention: heads % kv_heads == 0 and query head h reads kv head
h // (heads // kv_heads).  Every query of a row sees every valid entry (no causal
mask inside the queries: this is decode over a cache).

Every function returns (out, lse):
  out_bqhd: (batch, num_queries, heads, head_dim) in q's dtype
  lse_bqh:  (batch, num_queries, heads) float32, log-sum-exp of the *scaled*
            logits over the valid entries.
A row with an empty window (end <= start) attends to nothing: out = 0 and lse = -inf.  That is the
identity element of `merge_partials`, so an empty cache part merges exactly.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

NEG_INF = float("-inf")


def default_scale(head_dim: int) -> float:
    return 1.0 / float(head_dim) ** 0.5


def _valid_slots(lengths_b, starts_b, s: int):
    """(batch, s) bool: slot j of row b is in [start_b, end_b) (both clipped to [0, s])."""
    end = jnp.clip(jnp.asarray(lengths_b, jnp.int32), 0, s)
    start = jnp.zeros_like(end) if starts_b is None else jnp.clip(jnp.asarray(starts_b, jnp.int32), 0, s)
    slots = jnp.arange(s)[None, :]
    return (slots >= start[:, None]) & (slots < end[:, None])


def decode_attention_reference(q_bqhd, k_bskd, v_bskd, lengths_b, *, starts_b=None, scale=None):
    """Attention of a few queries per row over cache slots [starts[b], lengths[b]).

    Softmax is computed in float32 whatever the input dtype; out is cast back to
    q's dtype, lse stays float32.  The window is clipped to [0, cache_len].
    """
    b, nq, h, d = q_bqhd.shape
    bk, s, kh, dk = k_bskd.shape
    if (bk, dk) != (b, d) or v_bskd.shape[:3] != (b, s, kh):
        raise ValueError(f"shape mismatch: q {q_bqhd.shape}, k {k_bskd.shape}, v {v_bskd.shape}")
    if h % kh:
        raise ValueError(f"heads ({h}) must be a multiple of kv_heads ({kh})")
    g = h // kh
    scale = default_scale(d) if scale is None else float(scale)

    # Group query heads under their kv head: (b, q, kh, g, d).
    q = q_bqhd.astype(jnp.float32).reshape(b, nq, kh, g, d)
    k = k_bskd.astype(jnp.float32)
    v = v_bskd.astype(jnp.float32)
    logits = jnp.einsum("bqkgd,bskd->bkgqs", q, k, precision=jax.lax.Precision.HIGHEST) * scale
    valid_bs = _valid_slots(lengths_b, starts_b, s)
    logits = jnp.where(valid_bs[:, None, None, None, :], logits, NEG_INF)

    m = jnp.max(logits, axis=-1, keepdims=True)
    m_safe = jnp.where(jnp.isfinite(m), m, 0.0)        # empty rows: avoid inf - inf
    p = jnp.exp(logits - m_safe)                       # exp(-inf) = 0 on masked entries
    l = jnp.sum(p, axis=-1, keepdims=True)
    v = jnp.where(valid_bs[:, :, None, None], v, 0.0)  # unused slots may hold garbage (even NaN)
    o = jnp.einsum("bkgqs,bskd->bkgqd", p, v, precision=jax.lax.Precision.HIGHEST)
    o = o / jnp.where(l > 0, l, 1.0)                   # empty rows: o = 0
    lse = jnp.where(l[..., 0] > 0, m_safe[..., 0] + jnp.log(jnp.where(l[..., 0] > 0, l[..., 0], 1.0)), NEG_INF)

    out_bqhd = jnp.transpose(o, (0, 3, 1, 2, 4)).reshape(b, nq, h, d).astype(q_bqhd.dtype)
    lse_bqh = jnp.transpose(lse, (0, 3, 1, 2)).reshape(b, nq, h)
    return out_bqhd, lse_bqh


def decode_attention_xla(q_bqhd, k_bskd, v_bskd, lengths_b, *, starts_b=None, scale=None):
    """The production XLA path: same contract as decode_attention_reference, kernel numerics.

    Dots take the cache in its own dtype with float32 accumulation (no upcast copy
    of the cache), and the probabilities are cast to V's dtype for the PV product,
    as the Pallas kernels do.  For float32 inputs it equals the reference up to
    summation order.
    """
    b, nq, h, d = q_bqhd.shape
    s, kh = k_bskd.shape[1], k_bskd.shape[2]
    if h % kh:
        raise ValueError(f"heads ({h}) must be a multiple of kv_heads ({kh})")
    g = h // kh
    scale = default_scale(d) if scale is None else float(scale)
    dtype = k_bskd.dtype                   # compute in the cache's dtype (cast q, never the cache)
    v_bskd = v_bskd.astype(dtype)
    precision = jax.lax.Precision.HIGHEST if dtype == jnp.float32 else None

    q = q_bqhd.astype(dtype).reshape(b, nq, kh, g, d)
    logits = jnp.einsum("bqkgd,bskd->bkgqs", q, k_bskd, precision=precision,
                        preferred_element_type=jnp.float32) * scale
    valid_bs = _valid_slots(lengths_b, starts_b, s)
    logits = jnp.where(valid_bs[:, None, None, None, :], logits, NEG_INF)
    m = jnp.max(logits, axis=-1, keepdims=True)
    m_safe = jnp.where(jnp.isfinite(m), m, 0.0)
    p = jnp.exp(logits - m_safe)
    l = jnp.sum(p, axis=-1)
    v = jnp.where(valid_bs[:, :, None, None], v_bskd, jnp.zeros((), v_bskd.dtype))
    o = jnp.einsum("bkgqs,bskd->bkgqd", p.astype(v.dtype), v, precision=precision,
                   preferred_element_type=jnp.float32)
    nonempty = l > 0
    l_safe = jnp.where(nonempty, l, 1.0)
    o = o / l_safe[..., None]
    lse = jnp.where(nonempty, m_safe[..., 0] + jnp.log(l_safe), NEG_INF)
    out_bqhd = jnp.transpose(o, (0, 3, 1, 2, 4)).reshape(b, nq, h, d).astype(q_bqhd.dtype)
    return out_bqhd, jnp.transpose(lse, (0, 3, 1, 2)).reshape(b, nq, h)


def merge_partials(outs: Sequence[jax.Array], lses: Sequence[jax.Array], *, axis=None):
    """Exactly merge attention partials computed over disjoint key sets.

    outs[i]: (..., head_dim) partial outputs, lses[i]: (...) their float32 lse
    (e.g. a shared prompt cache and a per-sample suffix cache, or cache splits).
    Alternatively pass stacked arrays with `axis` naming the stacking axis
    (of lses; outs carry one more trailing dim).

    out = sum_i exp(lse_i - lse) * out_i with lse = logsumexp_i(lse_i).  Parts
    with lse = -inf (empty key sets) get weight 0; if every part is empty the
    result is out = 0, lse = -inf.  out has the dtype of outs[0].
    """
    if axis is None:
        o_all = jnp.stack([jnp.asarray(o) for o in outs], axis=0)
        l_all = jnp.stack([jnp.asarray(l, jnp.float32) for l in lses], axis=0)
        axis = 0
    else:
        o_all = jnp.asarray(outs)
        l_all = jnp.asarray(lses, jnp.float32)
        axis = axis % l_all.ndim
    dtype = o_all.dtype
    m = jnp.max(l_all, axis=axis, keepdims=True)
    m_safe = jnp.where(jnp.isfinite(m), m, 0.0)
    w = jnp.exp(l_all - m_safe)                          # 0 for empty parts
    total = jnp.sum(w, axis=axis, keepdims=True)
    out = jnp.sum(w[..., None] * o_all.astype(jnp.float32), axis=axis)
    nonempty = total > 0
    out = out / jnp.where(nonempty, total, 1.0)[..., None].squeeze(axis)
    lse = jnp.where(nonempty, m_safe + jnp.log(jnp.where(nonempty, total, 1.0)), NEG_INF)
    return out.astype(dtype), jnp.squeeze(lse, axis)
