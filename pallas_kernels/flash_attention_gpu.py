"""Causal self-attention for training and prefill on NVIDIA GPUs without cuDNN: a Pallas (Triton) flash kernel.

    causal_attention_gpu(q, k, v, interpret=False)

q (batch, T, heads, head_dim); k, v (batch, T, kv_heads, head_dim), heads % kv_heads == 0. Wraps
jax.experimental.pallas.ops.gpu.attention.mha (its own forward, dq and dkv Triton kernels, so jax.grad
runs kernels both ways). cuDNN's fused attention is the GPU default (photon_jax/model/attention.py); it
reads the cuDNN library and the device at trace time, so a process that compiles for a GPU it does not
have (deviceless AOT, photon_jax/scaleout/topology.py) takes this kernel instead. The kernel wants one kv
head per query head, so grouped kv heads are repeated; it pads head_dim to a power of two itself (masked
loads). `gpu_flash_takes(T)` says whether it applies: T a multiple of its 32-row backward tiles (and of
the 128-row forward tile once T >= 128).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax.experimental.pallas.ops.gpu import attention as pallas_gpu_attention

FORWARD_TILE = 128
BACKWARD_TILE = 32
KERNEL_NAMES = ("mha_forward", "mha_backward")  # names of its pallas_calls (tests count the launches)


def gpu_flash_takes(length: int) -> bool:
    return length % BACKWARD_TILE == 0 and (length < FORWARD_TILE or length % FORWARD_TILE == 0)


def causal_attention_gpu(q_bthd, k_bskd, v_bskd, interpret: bool = False):
    b, t, h, d = q_bthd.shape
    if not gpu_flash_takes(t):
        raise ValueError(f"the Triton flash kernel needs T a multiple of {BACKWARD_TILE} (and of {FORWARD_TILE} "
                         f"from {FORWARD_TILE} on), got T={t}")
    group = h // k_bskd.shape[2]
    k, v = (jnp.repeat(x, group, axis=2) if group > 1 else x for x in (k_bskd, v_bskd))
    tile = min(FORWARD_TILE, t)
    sizes = pallas_gpu_attention.BlockSizes(block_q=tile, block_k=tile, block_q_dkv=BACKWARD_TILE,
                                            block_kv_dkv=BACKWARD_TILE, block_q_dq=BACKWARD_TILE,
                                            block_kv_dq=BACKWARD_TILE)
    return pallas_gpu_attention.mha(q_bthd, k, v, None, sm_scale=d ** -0.5, causal=True, block_sizes=sizes,
                                    interpret=interpret)
