"""Masked softmax attention as plain XLA ops: the CPU default and the fallback of every fused path.

Two implementations of the same function:
* `reference_attention`: the definition, every product in fp32, differentiated by JAX. Tests compare
  every other path (fused, kernels, `attend`) with it.
* `attend`: what the model runs. Its backward is written by hand (jax.custom_vjp), the way flash
  attention kernels do it: the probabilities P are kept from the forward, and the softmax gradient
  uses delta = rowsum(dO * O) (a reduction over head_dim) instead of rowsum(P * dP) (over the keys).
  The matmuls take their operands in the compute dtype (bf16 in the presets; P and dS are cast to it
  as cuDNN's flash attention does) and accumulate in fp32; the softmax itself is fp32. On XLA:CPU this
  is what makes the difference: JAX's own gradient of the fp32 version runs every attention matmul of
  the backward in fp32 through transposes and converts (README, "Training speed against PyTorch").

Shapes: q (batch, q_len, heads, head_dim); k, v (batch, kv_len, kv_heads, head_dim), heads % kv_heads
== 0 (grouped-query attention); mask (batch or 1, q_len, kv_len) bool. A row whose mask is all False
returns zeros (and passes no gradient).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

MASKED = -1e30  # finite: a fully masked row gives exp(0) before the mask zeroes it, never NaN


def reference_attention(q_bthd, k_bskd, v_bskd, mask_bts):
    """The definition: grouped-query softmax attention with every product in fp32."""
    b, t, h, d = q_bthd.shape
    kv_heads = k_bskd.shape[2]
    q_btkgd = q_bthd.reshape(b, t, kv_heads, h // kv_heads, d)
    logits = jnp.einsum("btkgd,bskd->bkgts", q_btkgd.astype(jnp.float32), k_bskd.astype(jnp.float32))
    logits = logits * (d ** -0.5)
    mask = mask_bts[:, None, None, :, :]
    logits = jnp.where(mask, logits, MASKED)
    probs = jax.nn.softmax(logits, axis=-1)
    probs = jnp.where(mask, probs, 0.0)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v_bskd.astype(jnp.float32))
    return out.reshape(b, t, h, d).astype(q_bthd.dtype)


def attend(q_bthd, k_bskd, v_bskd, mask_bts):
    """Grouped-query softmax attention with a hand-written backward (see the module doc)."""
    b, t, h, d = q_bthd.shape
    kv_heads = k_bskd.shape[2]
    q_btkgd = q_bthd.reshape(b, t, kv_heads, h // kv_heads, d)
    return _attention(q_btkgd, k_bskd, v_bskd.astype(q_bthd.dtype), mask_bts).reshape(b, t, h, d)


def _dot(equation, a, b):
    """One attention matmul: operands in the compute dtype, fp32 accumulation."""
    return jnp.einsum(equation, a, b.astype(a.dtype), preferred_element_type=jnp.float32)


@jax.custom_vjp
def _attention(q_btkgd, k_bskd, v_bskd, mask_bts):
    return _forward(q_btkgd, k_bskd, v_bskd, mask_bts)[0]


def _forward(q_btkgd, k_bskd, v_bskd, mask_bts):
    dtype = q_btkgd.dtype
    mask = mask_bts[:, None, None, :, :]
    logits = _dot("btkgd,bskd->bkgts", q_btkgd, k_bskd) * (q_btkgd.shape[-1] ** -0.5)
    logits = jnp.where(mask, logits, MASKED)
    unnormalised = jnp.where(mask, jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True)), 0.0)
    total = jnp.sum(unnormalised, axis=-1, keepdims=True)
    probs_bkgts = unnormalised / jnp.where(total > 0, total, 1.0)
    out_btkgd = _dot("bkgts,bskd->btkgd", probs_bkgts.astype(dtype), v_bskd)
    return out_btkgd.astype(dtype), (q_btkgd, k_bskd, v_bskd, mask_bts, probs_bkgts, out_btkgd)


def _backward(residuals, dout_btkgd):
    q_btkgd, k_bskd, v_bskd, mask_bts, probs_bkgts, out_btkgd = residuals
    dtype = q_btkgd.dtype
    dv_bskd = _dot("bkgts,btkgd->bskd", probs_bkgts.astype(dtype), dout_btkgd)
    dprobs_bkgts = _dot("btkgd,bskd->bkgts", dout_btkgd, v_bskd)
    # softmax backward: dS = P * (dP - rowsum(P * dP)), and rowsum(P * dP) = rowsum(dO * O)
    delta_bkgt = jnp.einsum("btkgd,btkgd->bkgt", dout_btkgd.astype(jnp.float32), out_btkgd)
    dlogits_bkgts = probs_bkgts * (dprobs_bkgts - delta_bkgt[..., None]) * (q_btkgd.shape[-1] ** -0.5)
    dlogits_bkgts = dlogits_bkgts.astype(dtype)
    dq_btkgd = _dot("bkgts,bskd->btkgd", dlogits_bkgts, k_bskd)
    dk_bskd = _dot("bkgts,btkgd->bskd", dlogits_bkgts, q_btkgd)
    return dq_btkgd.astype(dtype), dk_bskd.astype(k_bskd.dtype), dv_bskd.astype(dtype), None


_attention.defvjp(_forward, _backward)
