"""Layout helpers shared by the GPU and TPU decode-attention kernels.

Both kernels work on "grouped" queries: all query heads that read one kv head,
for all queries of a row, are stacked into one matrix of M = num_queries * group
rows, so one program loads each K/V block once for the whole group (GQA).
Queries are tiny next to the cache, so rearranging them in the wrapper is free;
the cache itself is never copied or transposed.
"""

from __future__ import annotations

import contextlib
import contextvars

import jax
import jax.numpy as jnp

from pallas_kernels.reference import merge_partials


def round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def next_power_of_2(x: int) -> int:
    return 1 if x <= 1 else 1 << (int(x) - 1).bit_length()


KERNEL_DTYPES = ("float32", "bfloat16", "float16")
KERNEL_MAX_HEAD_DIM = 256


def kernel_shape_problem(head_dim: int, dtype, target: str | None = None) -> str | None:
    """Why the Pallas kernels (`target`'s, "gpu" / "tpu"; None: either) cannot take this head dim / cache
    dtype, or None when they can. Any head dim in [1, 256] works: the GPU kernel loads a power-of-two tile
    and masks the extra columns, the TPU kernel lays whole kv heads side by side in lanes. Mosaic (TPU)
    rejects float16 loads ("Invalid vector type for load" from libtpu for v4, v5e, v5p and v6e)."""
    if not 1 <= head_dim <= KERNEL_MAX_HEAD_DIM:
        return f"head dim {head_dim} is outside [1, {KERNEL_MAX_HEAD_DIM}]"
    if jnp.dtype(dtype).name not in KERNEL_DTYPES:
        return f"dtype {jnp.dtype(dtype).name} is not one of {', '.join(KERNEL_DTYPES)}"
    if target == "tpu" and jnp.dtype(dtype) == jnp.float16:
        return "float16 caches do not compile under Mosaic (TPU); use bfloat16 or float32"
    return None


def check_shapes(q_bqhd, k_bskd, v_bskd, lengths_b, starts_b=None):
    b, nq, h, d = q_bqhd.shape
    if k_bskd.ndim != 4 or k_bskd.shape != v_bskd.shape:
        raise ValueError(f"k {k_bskd.shape} and v {v_bskd.shape} must both be (batch, cache_len, kv_heads, head_dim)")
    bk, s, kh, dk = k_bskd.shape
    if bk != b or dk != d:
        raise ValueError(f"q {q_bqhd.shape} does not match cache {k_bskd.shape}")
    if h % kh:
        raise ValueError(f"heads ({h}) must be a multiple of kv_heads ({kh})")
    if jnp.shape(lengths_b) != (b,):
        raise ValueError(f"lengths must have shape ({b},), got {jnp.shape(lengths_b)}")
    if starts_b is not None and jnp.shape(starts_b) != (b,):
        raise ValueError(f"starts must have shape ({b},), got {jnp.shape(starts_b)}")
    return b, nq, h, d, s, kh


def group_queries(q_bqhd, kv_heads: int, m_padded: int):
    """(b, nq, h, d) -> (b, kv_heads, m_padded, d), row m = query * group + head_in_group."""
    b, nq, h, d = q_bqhd.shape
    g = h // kv_heads
    q = q_bqhd.reshape(b, nq, kv_heads, g, d).transpose(0, 2, 1, 3, 4).reshape(b, kv_heads, nq * g, d)
    return jnp.pad(q, ((0, 0), (0, 0), (0, m_padded - nq * g), (0, 0)))


def ungroup(out_bkmd, lse_bkm, num_queries: int, heads: int, dtype):
    """Inverse of group_queries for (out, lse); drops the padding rows."""
    b, kh, _, d = out_bkmd.shape
    g = heads // kh
    m = num_queries * g
    out = out_bkmd[:, :, :m].reshape(b, kh, num_queries, g, d).transpose(0, 2, 1, 3, 4)
    lse = lse_bkm[:, :, :m].reshape(b, kh, num_queries, g).transpose(0, 2, 1, 3)
    return out.reshape(b, num_queries, heads, d).astype(dtype), lse.reshape(b, num_queries, heads)


def combine_splits(out_bs_md, lse_bs_m):
    """Merge per-split partials stacked on axis 1: (b, splits, ..., d), (b, splits, ...)."""
    if out_bs_md.shape[1] == 1:
        return out_bs_md[:, 0], lse_bs_m[:, 0]
    return merge_partials(out_bs_md, lse_bs_m, axis=1)


def clip_lengths(lengths_b, cache_len: int):
    return jnp.clip(jnp.asarray(lengths_b).astype(jnp.int32), 0, cache_len)


def window(lengths_b, starts_b, cache_len: int):
    """The readable window [start, end) of each row, clipped to the cache (end = length; start
    defaults to 0; an end below its start is an empty window)."""
    end = clip_lengths(lengths_b, cache_len)
    start = jnp.zeros_like(end) if starts_b is None else jnp.minimum(clip_lengths(starts_b, cache_len), end)
    return start, end


_COMPILING_ON = contextvars.ContextVar("pallas_kernels_compiling_on", default="")


@contextlib.contextmanager
def compiling_on(platform: str | None):
    """Trace for `platform`'s devices ("gpu" / "tpu") while the default backend is another: ahead-of-time
    compilation for an accelerator this process describes but does not run (photon_jax/scaleout/topology.py).
    Every dispatch that asks on_platform() then picks that platform's kernels, compiled, not interpreted."""
    token = _COMPILING_ON.set(platform or "")
    try:
        yield
    finally:
        _COMPILING_ON.reset(token)


def on_platform() -> str:
    """'gpu', 'tpu' or 'cpu': the devices being compiled for (compiling_on), else the default backend."""
    platform = _COMPILING_ON.get() or jax.default_backend()
    return {"cuda": "gpu", "rocm": "gpu"}.get(platform, platform)
