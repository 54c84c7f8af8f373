"""Split-K (flash-decoding) attention over one KV cache: Pallas kernel lowered through Triton.

Grid: (batch, kv_head, cache_split, query_tile).  Program (b, h, s, t) streams the
cache rows [s * split_len, (s + 1) * split_len) of kv head h in blocks of block_k,
stops at the row's length (blocks past it are never loaded), and writes a
normalised partial (out, lse) for its split; the splits are merged afterwards
with the exact (out, lse) merge.  All query heads of the kv-head group, for all
queries of the row, are processed together as one (block_m, head_dim) matrix.

The cache stays in its native (batch, cache_len, kv_heads, head_dim) layout: a
block is a strided (block_k, head_dim) view, each row contiguous.  Loads are
masked past the row length (which also keeps the last, partial block of the
cache in bounds and ignores whatever garbage/NaN sits in unused cache slots).

Triton constraints honoured here: every loaded tile has a power-of-two size
(head_dim must be a power of two), dot operands are >= 16 on each side
(query rows are padded to >= 16), fp32 dots ask for IEEE precision explicitly
(Triton's default for fp32 is TF32).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

from pallas_kernels import common
from pallas_kernels.reference import default_scale

# (head_dim, itemsize) -> (block_k, num_warps, num_stages).  Decode is bandwidth
# bound: the K/V tile (block_k x head_dim) is sized to ~16-32 KiB so a few
# stages of it stay in flight per SM; larger head dims get more warps.
GPU_BLOCK_TABLE = {
    (64, 2): (128, 4, 3),
    (128, 2): (128, 4, 2),
    (256, 2): (64, 8, 2),
    (64, 4): (64, 4, 2),
    (128, 4): (64, 4, 2),
    (256, 4): (32, 8, 2),
}
MAX_BLOCK_M = 64          # query rows (num_queries * group) per program; more -> query tiles
TARGET_PROGRAMS = 264     # ~2 waves on an H100/H200 (132 SMs): how many programs splitting aims for
SUPPORTED_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


def gpu_supported(head_dim: int, dtype) -> bool:
    """Whether the Triton kernel handles this head dim / dtype (else use the XLA path)."""
    return (16 <= head_dim <= 256 and head_dim == common.next_power_of_2(head_dim)
            and jnp.dtype(dtype) in [jnp.dtype(t) for t in SUPPORTED_DTYPES])


def gpu_block_config(head_dim: int, dtype):
    """(block_k, num_warps, num_stages) for a head dim and dtype (table, else a safe default)."""
    itemsize = jnp.dtype(dtype).itemsize
    if (head_dim, itemsize) in GPU_BLOCK_TABLE:
        return GPU_BLOCK_TABLE[(head_dim, itemsize)]
    block_k = max(16, min(128, common.next_power_of_2(16384 // (head_dim * itemsize))))
    return block_k, 4 if head_dim <= 128 else 8, 2


def choose_splits(batch: int, kv_heads: int, cache_len: int, block_k: int, num_splits=None):
    """Static split of the cache length: (num_splits, split_len), split_len a multiple of block_k."""
    max_splits = max(1, -(-cache_len // block_k))
    if num_splits is None:
        num_splits = -(-TARGET_PROGRAMS // max(1, batch * kv_heads))
    num_splits = int(min(max(1, num_splits), max_splits))
    split_len = common.round_up(-(-cache_len // num_splits), block_k)
    return -(-cache_len // split_len), split_len


def _kernel(len_ref, q_ref, k_ref, v_ref, o_ref, lse_ref, *, block_k, split_len, scale):
    # len_ref: ()                       valid length of this batch row
    # q_ref:   (block_m, head_dim)      grouped queries of one kv head
    # k_ref:   (split_len, head_dim)    this split's view of the cache (may run past cache_len)
    # v_ref:   (split_len, head_dim)
    # o_ref:   (block_m, head_dim) f32  normalised partial output of this split
    # lse_ref: (block_m,) f32           partial log-sum-exp (-inf if the split is empty)
    block_m, head_dim = q_ref.shape
    split_start = pl.program_id(2) * split_len
    n_valid = jnp.clip(len_ref[()] - split_start, 0, split_len)   # valid rows in this split
    num_blocks = pl.cdiv(n_valid, block_k)                          # blocks past the length: skipped
    fp32 = q_ref.dtype == jnp.float32
    precision = lax.Precision.HIGHEST if fp32 else None             # IEEE fp32, not TF32

    q = q_ref[...]

    def body(i, carry):
        acc, m_prev, l_prev = carry
        rows = i * block_k + jnp.arange(block_k)
        valid = rows < n_valid                                       # (block_k,)
        kv_slice = pl.ds(pl.multiple_of(i * block_k, block_k), block_k)
        k = pl_triton.load(k_ref.at[kv_slice, :], mask=valid[:, None], other=0.0)
        s = lax.dot_general(q, k, (((1,), (1,)), ((), ())), precision=precision,
                            preferred_element_type=jnp.float32) * scale
        s = jnp.where(valid[None, :], s, -jnp.inf)
        m_next = jnp.maximum(m_prev, jnp.max(s, axis=1))            # finite: block has a valid row
        alpha = jnp.exp(m_prev - m_next)                             # 0 on the first block
        p = jnp.exp(s - m_next[:, None])
        l_next = alpha * l_prev + jnp.sum(p, axis=1)
        v = pl_triton.load(v_ref.at[kv_slice, :], mask=valid[:, None], other=0.0)
        pv = lax.dot_general(p.astype(v.dtype), v, (((1,), (0,)), ((), ())), precision=precision,
                             preferred_element_type=jnp.float32)
        return alpha[:, None] * acc + pv, m_next, l_next

    init = (jnp.zeros((block_m, head_dim), jnp.float32),
            jnp.full((block_m,), -jnp.inf, jnp.float32),
            jnp.zeros((block_m,), jnp.float32))
    acc, m, l = lax.fori_loop(0, num_blocks, body, init)
    nonempty = l > 0.0
    l_safe = jnp.where(nonempty, l, 1.0)
    o_ref[...] = acc / l_safe[:, None]
    lse_ref[...] = jnp.where(nonempty, m + jnp.log(l_safe), -jnp.inf)


@functools.partial(jax.jit, static_argnames=("scale", "block_k", "num_splits", "num_warps",
                                             "num_stages", "interpret", "return_splits"))
def decode_attention_gpu(q_bqhd, k_bskd, v_bskd, lengths_b, *, scale=None, block_k=None,
                         num_splits=None, num_warps=None, num_stages=None, interpret=False,
                         return_splits=False):
    """Decode attention on GPU (Pallas -> Triton).  Same contract as decode_attention_reference.

    q_bqhd: (batch, num_queries, heads, head_dim); k/v_bskd: (batch, cache_len, kv_heads, head_dim);
    lengths_b: (batch,) int.  Returns out_bqhd (q's dtype) and lse_bqh (float32; -inf for empty rows).
    With return_splits=True returns the unmerged per-split partials instead:
    out (batch, splits, kv_heads, m, head_dim) f32, lse (batch, splits, kv_heads, m), m = padded
    num_queries * group.
    """
    b, nq, h, d, s_len, kh = common.check_shapes(q_bqhd, k_bskd, v_bskd, lengths_b)
    out_dtype = q_bqhd.dtype
    if not gpu_supported(d, k_bskd.dtype):
        raise ValueError(f"GPU kernel needs a power-of-two head_dim in [16, 256] and one of "
                         f"{[jnp.dtype(t).name for t in SUPPORTED_DTYPES]}; got {d}, {k_bskd.dtype}")
    # Compute in the cache's dtype: casting the (tiny) queries is free, casting the cache is not.
    q_bqhd = q_bqhd.astype(k_bskd.dtype)
    v_bskd = v_bskd.astype(k_bskd.dtype)
    scale = default_scale(d) if scale is None else float(scale)
    cfg_bk, cfg_warps, cfg_stages = gpu_block_config(d, q_bqhd.dtype)
    block_k = block_k or cfg_bk
    if block_k < 16 or block_k != common.next_power_of_2(block_k):
        raise ValueError(f"block_k must be a power of two >= 16, got {block_k}")
    # Short caches: one block of the next power of two >= cache_len (min 16).
    block_k = min(block_k, max(16, common.next_power_of_2(s_len)))
    num_splits, split_len = choose_splits(b, kh, s_len, block_k, num_splits)

    m = nq * (h // kh)
    m_pad = max(16, common.next_power_of_2(m))
    block_m = min(m_pad, MAX_BLOCK_M)
    m_tiles = m_pad // block_m
    q_bkmd = common.group_queries(q_bqhd, kh, m_pad)
    lengths_b = common.clip_lengths(lengths_b, s_len)

    kernel = functools.partial(_kernel, block_k=block_k, split_len=split_len, scale=scale)
    out, lse = pl.pallas_call(
        kernel,
        grid=(b, kh, num_splits, m_tiles),
        in_specs=[
            pl.BlockSpec((None,), lambda bi, hi, si, ti: (bi,)),
            pl.BlockSpec((None, None, block_m, d), lambda bi, hi, si, ti: (bi, hi, ti, 0)),
            pl.BlockSpec((None, split_len, None, d), lambda bi, hi, si, ti: (bi, si, hi, 0)),
            pl.BlockSpec((None, split_len, None, d), lambda bi, hi, si, ti: (bi, si, hi, 0)),
        ],
        out_specs=[
            pl.BlockSpec((None, None, None, block_m, d), lambda bi, hi, si, ti: (bi, si, hi, ti, 0)),
            pl.BlockSpec((None, None, None, block_m), lambda bi, hi, si, ti: (bi, si, hi, ti)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct((b, num_splits, kh, m_pad, d), jnp.float32),
            jax.ShapeDtypeStruct((b, num_splits, kh, m_pad), jnp.float32),
        ],
        compiler_params=pl_triton.CompilerParams(num_warps=num_warps or cfg_warps,
                                                 num_stages=num_stages or cfg_stages),
        interpret=interpret,
        name="photon_decode_attention_gpu",
    )(lengths_b, q_bkmd, k_bskd, v_bskd)
    if return_splits:
        return out, lse
    out_bkmd, lse_bkm = common.combine_splits(out, lse)
    return common.ungroup(out_bkmd, lse_bkm, nq, h, out_dtype)
