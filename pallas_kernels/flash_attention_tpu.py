"""Causal (or block-local causal) self-attention for training and prefill on TPU: splash attention.

    causal_attention_tpu(q, k, v, block=0, interpret=False)

q (batch, T, heads, head_dim); k, v (batch, T, kv_heads, head_dim), heads % kv_heads == 0. Wraps
jax.experimental.pallas.ops.tpu.splash_attention (a Pallas/Mosaic flash-attention kernel with its own
forward, dq and dkv kernels, so jax.grad runs kernels both ways): the mask is a lazy CausalMask, or a
ChunkedCausalMask when `block` > 0 (causal inside blocks of `block` positions), so no (T, T) array
exists and fully masked tiles are skipped. The kernel does not scale logits: q is scaled by
head_dim^-0.5 first. Head dims are zero-padded to a multiple of 128 (the TPU lane width; zero columns
change no logit and give zero outputs). `interpret=True` runs the same kernel in Pallas interpret mode
(any backend; how the tests run it on CPU).

`splash_takes(T, block)` says whether the kernel applies: T a multiple of 128 (its tile), and block
0 or a divisor of T. Shorter sequences (PHOTON's local decoder windows, tiny test models) stay on the
XLA path.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask

LANES = 128
SPLASH_KERNEL_PREFIX = "splash_mha"  # names of its forward / dq / dkv pallas_calls (tests count the launches)


def splash_takes(length: int, block: int = 0) -> bool:
    return length >= LANES and length % LANES == 0 and (block == 0 or length % block == 0)


def _tile(length: int) -> int:
    """The largest of 512, 256, 128 dividing T (bigger tiles: fewer grid steps on long sequences)."""
    return next(t for t in (512, 256, LANES) if length % t == 0)


def _kernel(length: int, heads: int, block: int, interpret: bool):
    shape = (length, length)
    head_mask = splash_mask.ChunkedCausalMask(shape, block) if block and block < length \
        else splash_mask.CausalMask(shape)
    tile = _tile(length)
    sizes = splash.BlockSizes(block_q=tile, block_kv=tile, block_kv_compute=tile, block_q_dkv=tile,
                              block_kv_dkv=tile, block_kv_dkv_compute=tile, block_q_dq=tile, block_kv_dq=tile)
    # built per trace, not cached: its tile tables are arrays of the trace that builds it (numpy work, cheap)
    return splash.make_splash_mha(splash_mask.MultiHeadMask([head_mask] * heads), block_sizes=sizes,
                                  head_shards=1, q_seq_shards=1, interpret=interpret)


def causal_attention_tpu(q_bthd, k_bskd, v_bskd, block: int = 0, interpret: bool = False):
    b, t, h, d = q_bthd.shape
    if not splash_takes(t, block):
        raise ValueError(f"splash attention needs T a multiple of {LANES} and block dividing T, got T={t}, "
                         f"block={block}")
    padded = -(-d // LANES) * LANES
    pad = lambda x: jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, padded - d)))  # noqa: E731
    heads_first = lambda x: jnp.swapaxes(pad(x), 1, 2)  # noqa: E731  (batch, heads, T, head_dim)
    # Mosaic has no float16 vectors ("Invalid vector type for load", every TPU generation): fp16 inputs
    # run in fp32 (exact; bf16 would drop 3 mantissa bits)
    up = lambda x: x.astype(jnp.float32) if x.dtype == jnp.float16 else x  # noqa: E731
    q_scaled = (q_bthd.astype(jnp.float32) * d ** -0.5).astype(q_bthd.dtype)
    kernel = _kernel(t, h, block, interpret)
    out_bhtd = jax.vmap(kernel)(heads_first(up(q_scaled)), heads_first(up(k_bskd)), heads_first(up(v_bskd)))
    return jnp.swapaxes(out_bhtd, 1, 2)[..., :d].astype(q_bthd.dtype)
