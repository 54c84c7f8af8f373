"""Split-K (flash-decoding) attention over one KV cache: Pallas kernel lowered through Triton.

Grid: (batch, kv_head, cache_split, query_tile).  Program (b, h, s, t) streams the
cache rows [s * split_len, (s + 1) * split_len) of kv head h in blocks of block_k,
only the blocks that overlap the row's readable window [start, end) (others are
never loaded), and writes a normalised partial (out, lse) for its split; the splits
are merged afterwards with the exact (out, lse) merge.  All query heads of the
kv-head group, for all queries of the row, are processed together as one
(block_m, head_dim) matrix.

The cache stays in its native (batch, cache_len, kv_heads, head_dim) layout: a
block is a strided (block_k, head_dim) view, each row contiguous.  Loads are
masked past the row length (which also keeps the last, partial block of the
cache in bounds and ignores whatever garbage/NaN sits in unused cache slots).

Triton constraints honoured here: every loaded tile has a power-of-two size (a
head_dim that is not one, e.g. 52 at the paper's 600M shape, is loaded as a tile of
the next power of two with the extra columns masked: they are never read from
memory, and the queries are zero-padded in the wrapper, so nothing is copied),
dot operands are >= 16 on each side (query rows and the tile width are padded to
>= 16), fp32 dots ask for IEEE precision explicitly (Triton's default for fp32 is
TF32).
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


def tile_width(head_dim: int) -> int:
    """The power-of-two tile (>= 16) the kernel loads for one row of a head."""
    return max(16, common.next_power_of_2(head_dim))


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


def _kernel(start_ref, end_ref, q_ref, k_ref, v_ref, o_ref, lse_ref, *, block_k, split_len, scale, head_dim):
    # start_ref, end_ref: ()            readable window [start, end) of this batch row
    # q_ref:   (block_m, tile)          grouped queries of one kv head, zero-padded to the tile width
    # k_ref:   (split_len, tile)        this split's view of the cache (may run past cache_len, and
    # v_ref:   (split_len, tile)        past head_dim into the next head: such entries are masked)
    # o_ref:   (block_m, tile) f32      normalised partial output of this split (columns >= head_dim: 0)
    # lse_ref: (block_m,) f32           partial log-sum-exp (-inf if the split's window is empty)
    block_m, tile = q_ref.shape
    split_start = pl.program_id(2) * split_len
    lo = jnp.clip(start_ref[()] - split_start, 0, split_len)       # window rows of this split: [lo, hi)
    hi = jnp.clip(end_ref[()] - split_start, 0, split_len)
    # Only blocks that overlap [lo, hi) run (each holds a valid row, so the running max is finite).
    first_block = lo // block_k
    num_blocks = jnp.where(hi > lo, pl.cdiv(hi, block_k), first_block)
    fp32 = q_ref.dtype == jnp.float32
    precision = lax.Precision.HIGHEST if fp32 else None             # IEEE fp32, not TF32
    columns = jnp.arange(tile) < head_dim                            # all true unless the tile is padded

    q = q_ref[...]

    def body(i, carry):
        acc, m_prev, l_prev = carry
        rows = i * block_k + jnp.arange(block_k)
        valid = (rows >= lo) & (rows < hi)                           # (block_k,)
        kv_slice = pl.ds(pl.multiple_of(i * block_k, block_k), block_k)
        load_mask = valid[:, None] & columns[None, :]
        k = pl_triton.load(k_ref.at[kv_slice, :], mask=load_mask, other=0.0)
        s = lax.dot_general(q, k, (((1,), (1,)), ((), ())), precision=precision,
                            preferred_element_type=jnp.float32) * scale
        s = jnp.where(valid[None, :], s, -jnp.inf)
        m_next = jnp.maximum(m_prev, jnp.max(s, axis=1))            # finite: block has a valid row
        alpha = jnp.exp(m_prev - m_next)                             # 0 on the first block
        p = jnp.exp(s - m_next[:, None])
        l_next = alpha * l_prev + jnp.sum(p, axis=1)
        v = pl_triton.load(v_ref.at[kv_slice, :], mask=load_mask, other=0.0)
        pv = lax.dot_general(p.astype(v.dtype), v, (((1,), (0,)), ((), ())), precision=precision,
                             preferred_element_type=jnp.float32)
        return alpha[:, None] * acc + pv, m_next, l_next

    init = (jnp.zeros((block_m, tile), jnp.float32),
            jnp.full((block_m,), -jnp.inf, jnp.float32),
            jnp.zeros((block_m,), jnp.float32))
    acc, m, l = lax.fori_loop(first_block, num_blocks, body, init)
    nonempty = l > 0.0
    l_safe = jnp.where(nonempty, l, 1.0)
    o_ref[...] = acc / l_safe[:, None]
    lse_ref[...] = jnp.where(nonempty, m + jnp.log(l_safe), -jnp.inf)


@functools.partial(jax.jit, static_argnames=("scale", "block_k", "num_splits", "num_warps",
                                             "num_stages", "interpret", "return_splits"))
def decode_attention_gpu(q_bqhd, k_bskd, v_bskd, lengths_b, starts_b=None, *, scale=None, block_k=None,
                         num_splits=None, num_warps=None, num_stages=None, interpret=False,
                         return_splits=False):
    """Decode attention on GPU (Pallas -> Triton).  Same contract as decode_attention_reference.

    q_bqhd: (batch, num_queries, heads, head_dim); k/v_bskd: (batch, cache_len, kv_heads, head_dim);
    lengths_b, starts_b: (batch,) int, the readable window [start, end) of each row (start default 0).
    Returns out_bqhd (q's dtype) and lse_bqh (float32; -inf for empty windows).
    With return_splits=True returns the unmerged per-split partials instead:
    out (batch, splits, kv_heads, m, head_dim) f32, lse (batch, splits, kv_heads, m), m = padded
    num_queries * group.
    """
    b, nq, h, d, s_len, kh = common.check_shapes(q_bqhd, k_bskd, v_bskd, lengths_b, starts_b)
    out_dtype = q_bqhd.dtype
    problem = common.kernel_shape_problem(d, k_bskd.dtype)
    if problem:
        raise ValueError(f"the GPU decode kernel cannot run: {problem}")
    # Compute in the cache's dtype: casting the (tiny) queries is free, casting the cache is not.
    q_bqhd = q_bqhd.astype(k_bskd.dtype)
    v_bskd = v_bskd.astype(k_bskd.dtype)
    scale = default_scale(d) if scale is None else float(scale)  # the true head dim's scale
    tile = tile_width(d)
    cfg_bk, cfg_warps, cfg_stages = gpu_block_config(tile, q_bqhd.dtype)
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
    q_bkmd = jnp.pad(q_bkmd, ((0, 0), (0, 0), (0, 0), (0, tile - d)))  # tiny: the queries only
    starts_b, ends_b = common.window(lengths_b, starts_b, s_len)

    kernel = functools.partial(_kernel, block_k=block_k, split_len=split_len, scale=scale, head_dim=d)
    out, lse = pl.pallas_call(
        kernel,
        grid=(b, kh, num_splits, m_tiles),
        in_specs=[
            pl.BlockSpec((None,), lambda bi, hi, si, ti: (bi,)),
            pl.BlockSpec((None,), lambda bi, hi, si, ti: (bi,)),
            pl.BlockSpec((None, None, block_m, tile), lambda bi, hi, si, ti: (bi, hi, ti, 0)),
            pl.BlockSpec((None, split_len, None, tile), lambda bi, hi, si, ti: (bi, si, hi, 0)),
            pl.BlockSpec((None, split_len, None, tile), lambda bi, hi, si, ti: (bi, si, hi, 0)),
        ],
        out_specs=[
            pl.BlockSpec((None, None, None, block_m, tile), lambda bi, hi, si, ti: (bi, si, hi, ti, 0)),
            pl.BlockSpec((None, None, None, block_m), lambda bi, hi, si, ti: (bi, si, hi, ti)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct((b, num_splits, kh, m_pad, tile), jnp.float32),
            jax.ShapeDtypeStruct((b, num_splits, kh, m_pad), jnp.float32),
        ],
        compiler_params=pl_triton.CompilerParams(num_warps=num_warps or cfg_warps,
                                                 num_stages=num_stages or cfg_stages),
        interpret=interpret,
        name="photon_decode_attention_gpu",
    )(starts_b, ends_b, q_bkmd, k_bskd, v_bskd)
    out = out[..., :d]
    if return_splits:
        return out, lse
    out_bkmd, lse_bkm = common.combine_splits(out, lse)
    return common.ungroup(out_bkmd, lse_bkm, nq, h, out_dtype)
