"""Split-K decode attention over one KV cache: Pallas kernel for TPU (Mosaic).

Grid: (batch, kv_head_block, cache_split, block) with the last axis sequential
("arbitrary"): program (b, j, s, i) folds cache block s * blocks_per_split + i of
row b into VMEM accumulators (online softmax) and writes the split's normalised
partial (out, lse) after its last block.  Splits are merged afterwards with the
exact (out, lse) merge (splits only help when batch * kv_head_blocks is small,
e.g. to feed both TensorCores of a megacore chip).

Each row's readable window [start, end) is scalar-prefetched into SMEM
(PrefetchScalarGridSpec): the compute of blocks outside it is skipped (pl.when), and
their index_map is clamped into the window's first..last block, so the pipeline sees
an unchanged block index and issues no DMA for them: a row reads only the blocks
that overlap its window, whatever the cache capacity.

Layout ((8, 128) tiling): the cache (batch, cache_len, kv_heads, head_dim) is
viewed, for free, as (batch, cache_len, kv_heads * head_dim); a block is
(block_k, lanes) with lanes = hb * head_dim covering hb consecutive kv heads,
hb the smallest divisor of kv_heads with a multiple of 128 lanes (else all
kv heads: the block then spans the full last dim).  No lane slicing happens in
the kernel: the queries of kv head j (of the hb in a block) are placed in lanes
[j * head_dim, (j + 1) * head_dim) of an otherwise-zero (m, lanes) matrix, so
q_j @ K_block^T is exactly head j's logits, and p_j @ V_block carries head j's
output in those same lanes (the wrapper extracts them).  With head_dim >= 128
hb = 1 and nothing is wasted; with head_dim 64, hb = 2 and the MXU does 2x the
(tiny) work while the DMA stays dense.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels import common
from pallas_kernels.reference import default_scale

LANES = 128
# itemsize -> elements of one K (or V) block, block_k * lanes.  K and V are
# double-buffered: 4 blocks of 256 KiB (bf16: 1024 x 128) = 1 MiB of VMEM.
TPU_BLOCK_ELEMS = {2: 1024 * 128, 4: 512 * 128}
MAX_BLOCK_K = 2048
MIN_BLOCK_K = 128


def heads_per_block(kv_heads: int, head_dim: int) -> int:
    for hb in range(1, kv_heads + 1):
        if kv_heads % hb == 0 and (hb * head_dim) % LANES == 0:
            return hb
    return kv_heads


def tpu_block_config(kv_heads: int, head_dim: int, dtype):
    """(heads_per_block, block_k) for the cache block (block_k, heads_per_block * head_dim)."""
    hb = heads_per_block(kv_heads, head_dim)
    elems = TPU_BLOCK_ELEMS.get(jnp.dtype(dtype).itemsize, 512 * 128)
    block_k = elems // (hb * head_dim)
    block_k = max(MIN_BLOCK_K, min(MAX_BLOCK_K, block_k // MIN_BLOCK_K * MIN_BLOCK_K))
    return hb, block_k


def _kernel(start_ref, end_ref, q_ref, k_ref, v_ref, o_ref, lse_ref, acc_scr, m_scr, l_scr, *,
            block_k, blocks_per_split, scale):
    # start_ref, end_ref: (batch,) int32 SMEM   scalar-prefetched windows [start, end)
    # q_ref:   (hb, m, lanes)              head j's queries in lanes of head j, zeros elsewhere
    # k_ref:   (block_k, lanes)            cache block (hb kv heads side by side in lanes)
    # v_ref:   (block_k, lanes)
    # o_ref:   (hb, m, lanes) f32          normalised partial output (head j's lanes meaningful)
    # lse_ref: (hb, m, 128) f32            partial lse, replicated over lanes
    # acc_scr: (hb, m, lanes) f32; m_scr, l_scr: (hb, m, 128) f32 (lane-replicated running max / sum)
    b, split, i = pl.program_id(0), pl.program_id(2), pl.program_id(3)
    lo, hi = start_ref[b], end_ref[b]
    start = (split * blocks_per_split + i) * block_k                   # first cache row of this block
    hb, m, lanes = q_ref.shape
    precision = lax.Precision.HIGHEST if q_ref.dtype == jnp.float32 else None

    @pl.when(i == 0)
    def _init():
        acc_scr[...] = jnp.zeros_like(acc_scr)
        m_scr[...] = jnp.full_like(m_scr, -jnp.inf)
        l_scr[...] = jnp.zeros_like(l_scr)

    def update(partial: bool):
        k = k_ref[...]
        v = v_ref[...]
        if partial:
            # Rows outside the window (and past cache_len in the last block) may hold garbage,
            # even NaN: zero them in V (in f32: no bf16 select needed) and mask the logits.
            row = start + lax.broadcasted_iota(jnp.int32, (block_k, lanes), 0)
            v = jnp.where((row >= lo) & (row < hi), v.astype(jnp.float32), 0.0).astype(v_ref.dtype)
            col = start + lax.broadcasted_iota(jnp.int32, (m, block_k), 1)
            valid = (col >= lo) & (col < hi)
        for j in range(hb):                                            # static, hb <= kv_heads
            s = lax.dot_general(q_ref[j], k, (((1,), (1,)), ((), ())), precision=precision,
                                preferred_element_type=jnp.float32) * scale   # (m, block_k)
            if partial:
                s = jnp.where(valid, s, -jnp.inf)
            m_prev = jnp.max(m_scr[j], axis=1, keepdims=True)          # (m, 1), lanes are equal
            l_prev = jnp.max(l_scr[j], axis=1, keepdims=True)
            m_next = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))  # finite: a valid row
            alpha = jnp.exp(m_prev - m_next)                           # 0 on the first block
            p = jnp.exp(s - m_next)
            l_next = alpha * l_prev + jnp.sum(p, axis=1, keepdims=True)
            m_scr[j] = jnp.broadcast_to(m_next, (m, LANES))
            l_scr[j] = jnp.broadcast_to(l_next, (m, LANES))
            pv = lax.dot_general(p.astype(v.dtype), v, (((1,), (0,)), ((), ())), precision=precision,
                                 preferred_element_type=jnp.float32)    # (m, lanes)
            acc_scr[j] = acc_scr[j] * alpha + pv

    # Blocks outside the window do nothing (and their DMA was elided by the index_map).
    inside = (start >= lo) & (start + block_k <= hi)
    overlaps = (lo < hi) & (start < hi) & (start + block_k > lo)
    pl.when(inside)(lambda: update(partial=False))
    pl.when(overlaps & ~inside)(lambda: update(partial=True))

    @pl.when(i == blocks_per_split - 1)
    def _finish():
        for j in range(hb):
            l = jnp.max(l_scr[j], axis=1, keepdims=True)               # (m, 1)
            nonempty = l > 0.0
            l_safe = jnp.where(nonempty, l, 1.0)
            o_ref[j] = acc_scr[j] / l_safe
            lse = jnp.where(nonempty, jnp.max(m_scr[j], axis=1, keepdims=True) + jnp.log(l_safe), -jnp.inf)
            lse_ref[j] = jnp.broadcast_to(lse, (m, LANES))


def _spread_queries(q_bkmd, hb: int):
    """(b, kh, m, d) -> (b, kh // hb, hb, m, hb * d): head j of a block in lanes [j*d, (j+1)*d)."""
    b, kh, m, d = q_bkmd.shape
    q = q_bkmd.reshape(b, kh // hb, hb, m, d)
    eye = jnp.eye(hb, dtype=q.dtype)                                    # place by a 0/1 outer product
    return jnp.einsum("bjhmd,hl->bjhmld", q, eye).reshape(b, kh // hb, hb, m, hb * d)


def _gather_heads(out, hb: int, d: int):
    """(..., hb, m, hb * d) -> (..., hb, m, d): keep head j's own lanes."""
    *lead, _, m, _ = out.shape
    out = out.reshape(*lead, hb, m, hb, d)
    return jnp.stack([out[..., j, :, j, :] for j in range(hb)], axis=-3)


@functools.partial(jax.jit, static_argnames=("scale", "block_k", "num_splits", "interpret",
                                             "return_splits"))
def decode_attention_tpu(q_bqhd, k_bskd, v_bskd, lengths_b, starts_b=None, *, scale=None, block_k=None,
                         num_splits=None, interpret=False, return_splits=False):
    """Decode attention on TPU (Pallas -> Mosaic).  Same contract as decode_attention_reference.

    q_bqhd: (batch, num_queries, heads, head_dim); k/v_bskd: (batch, cache_len, kv_heads, head_dim);
    lengths_b, starts_b: (batch,) int, the readable window [start, end) of each row (start default 0).
    Returns out_bqhd (q's dtype) and lse_bqh (float32; -inf for empty windows).
    With return_splits=True returns the unmerged partials: out (batch, splits, kv_heads, m, head_dim)
    f32 and lse (batch, splits, kv_heads, m), m = num_queries * group padded to the sublane tile.
    """
    b, nq, h, d, s_len, kh = common.check_shapes(q_bqhd, k_bskd, v_bskd, lengths_b, starts_b)
    out_dtype = q_bqhd.dtype
    dtype = k_bskd.dtype                  # compute in the cache's dtype: cast the tiny q, not the cache
    q_bqhd = q_bqhd.astype(dtype)
    v_bskd = v_bskd.astype(dtype)
    scale = default_scale(d) if scale is None else float(scale)
    hb, cfg_bk = tpu_block_config(kh, d, dtype)
    block_k = block_k or cfg_bk
    if block_k >= s_len:
        block_k = s_len                      # one block spanning the full cache dim (always legal)
    elif block_k % 8:
        raise ValueError(f"block_k must be a multiple of 8 (sublanes), got {block_k}")
    total_blocks = -(-s_len // block_k)
    kb = kh // hb
    if num_splits is None:
        num_splits = 2 if b * kb < 2 else 1  # give both cores of a megacore chip some work
    num_splits = max(1, min(int(num_splits), total_blocks))
    blocks_per_split = -(-total_blocks // num_splits)
    num_splits = -(-total_blocks // blocks_per_split)
    lanes = hb * d

    m = nq * (h // kh)
    sublanes = 8 * (4 // jnp.dtype(dtype).itemsize) if jnp.dtype(dtype).itemsize < 4 else 8
    m_pad = common.round_up(m, sublanes)
    q = _spread_queries(common.group_queries(q_bqhd, kh, m_pad), hb)    # (b, kb, hb, m_pad, lanes)
    k = k_bskd.reshape(b, s_len, kh * d)                                # free: contiguous view
    v = v_bskd.reshape(b, s_len, kh * d)
    starts_b, ends_b = common.window(lengths_b, starts_b, s_len)

    def kv_index(bi, ji, si, ii, start_ref, end_ref):
        # Clamp into the window's blocks: skipped blocks repeat an index -> no new DMA.
        first = lax.div(start_ref[bi], block_k)  # non-negative: truncating division (no sign op in Mosaic)
        last = jnp.maximum(pl.cdiv(end_ref[bi], block_k) - 1, first)
        return bi, jnp.clip(si * blocks_per_split + ii, first, last), ji

    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=2,
        grid=(b, kb, num_splits, blocks_per_split),
        in_specs=[
            pl.BlockSpec((None, None, hb, m_pad, lanes), lambda bi, ji, si, ii, *_: (bi, ji, 0, 0, 0)),
            pl.BlockSpec((None, block_k, lanes), kv_index),
            pl.BlockSpec((None, block_k, lanes), kv_index),
        ],
        out_specs=[
            pl.BlockSpec((None, None, None, hb, m_pad, lanes),
                         lambda bi, ji, si, ii, *_: (bi, si, ji, 0, 0, 0)),
            pl.BlockSpec((None, None, None, hb, m_pad, LANES),
                         lambda bi, ji, si, ii, *_: (bi, si, ji, 0, 0, 0)),
        ],
        scratch_shapes=[
            pltpu.VMEM((hb, m_pad, lanes), jnp.float32),
            pltpu.VMEM((hb, m_pad, LANES), jnp.float32),
            pltpu.VMEM((hb, m_pad, LANES), jnp.float32),
        ],
    )
    kernel = functools.partial(_kernel, block_k=block_k, blocks_per_split=blocks_per_split, scale=scale)
    out, lse = pl.pallas_call(
        kernel,
        grid_spec=grid_spec,
        out_shape=[
            jax.ShapeDtypeStruct((b, num_splits, kb, hb, m_pad, lanes), jnp.float32),
            jax.ShapeDtypeStruct((b, num_splits, kb, hb, m_pad, LANES), jnp.float32),
        ],
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
        interpret=interpret,
        name="photon_decode_attention_tpu",
    )(starts_b, ends_b, q, k, v)
    out = _gather_heads(out, hb, d).reshape(b, num_splits, kh, m_pad, d)
    lse = lse[..., 0].reshape(b, num_splits, kh, m_pad)
    if return_splits:
        return out, lse
    out_bkmd, lse_bkm = common.combine_splits(out, lse)
    return common.ungroup(out_bkmd, lse_bkm, nq, h, out_dtype)
