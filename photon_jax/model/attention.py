"""Attention for every stack, through one entry point: `attention(q, k, v, mask, impl=, cache=)`.

Four cases, chosen from what the caller passes:
* causal self-attention without a cache (training and evaluation forwards: every encoder, every
  local decoder window, the vanilla stack), or the prefill of an empty cache from slot 0 (the prompt's
  keys are all the keys there are; the layer writes the cache and attends over the new keys only):
  the mask is a `CausalMask` description (causal, within
  blocks for block-local encoders), never a (T, T) array. With `impl` auto on GPU/TPU, or pallas,
  it runs fused: on TPU the splash attention kernel (causal or chunked-causal lazy mask, tiles of 128+,
  for T a multiple of 128); else jax.nn.dot_product_attention with is_causal (cuDNN flash attention on
  GPU in bf16/fp16 for head dims up to 128, padded to a multiple of 8; its XLA implementation
  elsewhere), block-local blocks folded into the batch. Otherwise (xla, or
  auto on CPU) the stack builds the dense mask once (`resolve_mask`) and runs `attend`
  (softmax_attention.py: plain XLA ops with a hand-written backward; `reference_attention` there is
  the definition the tests hold every path to);
* full attention over an explicit (batch, q, kv) mask (prefill into a cache, decoder windows in
  generation): `attend`, softmax in fp32;
* one query per row over a KV cache (decode steps): the kernel package's decode attention
  (pallas_kernels.dispatch) when `impl` selects a kernel for this platform and shape, else `attend`.
  The kernels read a window [start, end) of slots per row: every cache the generation code reads
  one query at a time exposes a contiguous readable window (level caches and local decoder windows
  from slot 0, block-local caches from their block's first unit, exact-local rings), which
  `mask_window` reads off the mask;
* a cache split into a prompt part shared by several samples and each sample's own suffix
  (multi-sample generation, generation/multiquery.py): cascade attention. The shared part goes
  through decode attention with the samples' queries stacked (each prompt's cache is read once for
  all of its samples), the suffix through decode attention too when a kernel is selected (else a
  masked partial), and the two partials merge exactly by their log-sum-exp
  (pallas_kernels.merge.merge_two).

Shapes: q (batch, q_len, heads, head_dim); k, v (batch, kv_len, kv_heads, head_dim), grouped-query
attention with heads % kv_heads == 0; mask (batch, q_len, kv_len) bool.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from pallas_kernels.common import on_platform
from pallas_kernels.dispatch import decode_attention, resolve_impl
from pallas_kernels.flash_attention_gpu import causal_attention_gpu, gpu_flash_takes
from pallas_kernels.flash_attention_tpu import causal_attention_tpu, splash_takes
from pallas_kernels.merge import merge_two
from photon_jax.model.softmax_attention import attend, reference_attention  # noqa: F401 (re-exported)


def causal_mask(q_pos_bt, kv_pos_bs, kv_valid_bs=None, block: int = 0):
    """(batch, q, kv) bool: kv position <= q position, optionally within the same block of `block`."""
    mask = kv_pos_bs[:, None, :] <= q_pos_bt[:, :, None]
    if block:
        mask &= (kv_pos_bs[:, None, :] // block) == (q_pos_bt[:, :, None] // block)
    if kv_valid_bs is not None:
        mask &= kv_valid_bs[:, None, :]
    return mask


FUSED_SCOPE = "photon_fused_attention"


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class CausalMask:
    """Causal self-attention over the positions 0..T-1 of one sequence (the keys are the queries),
    restricted to blocks of `block` positions when block > 0: a description, not an array."""

    block: int = 0

    def dense(self, length: int, kv_length: int | None = None):
        """The same mask as a (1, T, S) bool array (the reference path); S = kv_length (a cache being
        prefilled from slot 0: its slots past T are masked), default T."""
        positions = jnp.arange(length, dtype=jnp.int32)[None, :]
        kv_positions = jnp.arange(kv_length or length, dtype=jnp.int32)[None, :]
        return causal_mask(positions, kv_positions, block=self.block)


def uses_fused(impl: str) -> bool:
    """Whether causal self-attention runs fused: always with pallas, on GPU/TPU with auto, never with xla."""
    if impl == "xla":
        return False
    return impl == "pallas" or on_platform() in ("gpu", "tpu")


def resolve_mask(mask, length: int, impl: str, kv_length: int | None = None):
    """Once per stack: a CausalMask stays a description when the fused path will take it, else it
    becomes the dense array every layer reads (over kv_length cache slots when prefilling a cache);
    arrays pass through."""
    if isinstance(mask, CausalMask) and not uses_fused(impl):
        return mask.dense(length, kv_length)
    return mask


def flash_platform() -> str:
    """The platform whose fused kernel the causal path uses ('tpu', 'gpu' or 'cpu'; tests patch this to run
    the TPU kernel in interpret mode on CPU)."""
    return on_platform()


def fused_causal_attention(q_bthd, k_bthd, v_bthd, block: int = 0):
    """Causal (block-local when block > 0) grouped-query self-attention, fused: on TPU the splash attention
    kernel (pallas_kernels.flash_attention_tpu: a lazy causal / chunked-causal mask, no mask array) when T
    is a multiple of its 128 tile; otherwise jax.nn.dot_product_attention (cuDNN flash attention on GPU when
    it supports the shape, XLA otherwise), block-local blocks folded into the batch axis."""
    b, t, h, d = q_bthd.shape
    if flash_platform() == "tpu" and splash_takes(t, block):
        kernel = lambda q, k, v: causal_attention_tpu(q, k, v, block, interpret=on_platform() != "tpu")  # noqa: E731
        with jax.named_scope(FUSED_SCOPE):
            return per_shard(kernel, q_bthd, k_bthd, v_bthd)
    if block and block < t:
        fold = lambda x: x.reshape(b * (t // block), block, *x.shape[2:])  # noqa: E731
        return fused_causal_attention(fold(q_bthd), fold(k_bthd), fold(v_bthd)).reshape(b, t, h, d)
    if flash_platform() == "gpu" and not cudnn_in_process() and gpu_flash_takes(t):
        # compiling for a GPU this process does not have: cuDNN cannot be traced, the Triton kernel can
        kernel = lambda q, k, v: causal_attention_gpu(q, k, v, interpret=on_platform() != "gpu")  # noqa: E731
        with jax.named_scope(FUSED_SCOPE):
            return per_shard(kernel, q_bthd, k_bthd, v_bthd)
    with jax.named_scope(FUSED_SCOPE):  # visible in traced programs: tests check the path was taken
        if not cudnn_takes(q_bthd.dtype, d):
            return jax.nn.dot_product_attention(q_bthd, k_bthd, v_bthd, is_causal=True, implementation="xla")
        # cuDNN wants a head dim that is a multiple of 8 (the 600M preset has 52): zero columns change no
        # logit and produce zero outputs; the scale stays the true head dim's
        padded = -(-d // 8) * 8
        pad = lambda x: jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, padded - d)))  # noqa: E731
        out = jax.nn.dot_product_attention(pad(q_bthd), pad(k_bthd), pad(v_bthd), is_causal=True,
                                           scale=d ** -0.5, implementation="cudnn")
        return out[..., :d]


def per_shard(kernel, q_bthd, k_bskd, v_bskd):
    """Run a kernel (a pallas_call XLA cannot partition) once per device on its own rows and heads: under
    a multi-device mesh, shard_map with the specs the logical rules give (batch, heads / kv_heads); the
    sequence and head_dim stay whole. Heads that do not split evenly stay replicated."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return kernel(q_bthd, k_bskd, v_bskd)
    batch_ax, heads_ax = nn.logical_to_mesh_axes(("batch", "heads"))
    (kv_ax,) = nn.logical_to_mesh_axes(("kv_heads",))  # its own call: one spec cannot use a mesh axis twice

    def size(axes):
        names = axes if isinstance(axes, tuple) else (axes,) if axes else ()
        return math.prod(mesh.shape[name] for name in names)

    if q_bthd.shape[2] % size(heads_ax) or k_bskd.shape[2] % size(kv_ax) or size(heads_ax) != size(kv_ax):
        heads_ax = kv_ax = None  # a group of query heads must sit with its kv head
    if q_bthd.shape[0] % size(batch_ax):
        batch_ax = None
    q_spec, kv_spec = P(batch_ax, None, heads_ax, None), P(batch_ax, None, kv_ax, None)
    return jax.shard_map(kernel, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec), out_specs=q_spec,
                         check_vma=False)(q_bthd, k_bskd, v_bskd)


def cudnn_in_process() -> bool:
    """Whether this process runs on a GPU: cuDNN's attention reads its library and the device's compute
    capability while tracing, so a deviceless compile for a GPU cannot take it."""
    return jax.default_backend() in ("gpu", "cuda")


def cudnn_takes(dtype, head_dim: int) -> bool:
    """cuDNN flash attention: on a GPU, bf16/fp16, head dim up to 128 (after padding to a multiple of 8)."""
    return (on_platform() == "gpu" and cudnn_in_process() and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
            and head_dim <= 128)


def masked_partial(q_bthd, k_bskd, v_bskd, mask_bts):
    """Attention over one cache part with an arbitrary mask: (out (b,t,h,d) fp32, lse (b,t,h) fp32);
    a row that sees nothing gives out = 0, lse = -inf (the identity of the merge)."""
    b, t, h, d = q_bthd.shape
    kvh = k_bskd.shape[2]
    q = q_bthd.astype(jnp.float32).reshape(b, t, kvh, h // kvh, d)
    logits = jnp.einsum("btkgd,bskd->bkgts", q, k_bskd.astype(jnp.float32)) * (d ** -0.5)
    logits = jnp.where(mask_bts[:, None, None], logits, -jnp.inf)
    m = jnp.max(logits, axis=-1, keepdims=True)
    m_safe = jnp.where(jnp.isfinite(m), m, 0.0)
    p = jnp.exp(logits - m_safe)
    total = jnp.sum(p, axis=-1, keepdims=True)
    out = jnp.einsum("bkgts,bskd->bkgtd", p, v_bskd.astype(jnp.float32)) / jnp.where(total > 0, total, 1.0)
    lse = jnp.where(total[..., 0] > 0, m_safe[..., 0] + jnp.log(jnp.where(total[..., 0] > 0, total[..., 0], 1.0)),
                    -jnp.inf)
    out = jnp.transpose(out, (0, 3, 1, 2, 4)).reshape(b, t, h, d)
    lse = jnp.transpose(lse, (0, 3, 1, 2)).reshape(b, t, h)
    return out, lse


def uses_decode_kernel(impl: str, head_dim: int, cache_dtype) -> bool:
    """Whether single-query cached attention goes to a Pallas kernel (attention_impl, platform, shape)."""
    if impl == "xla":
        return False
    kind, _ = resolve_impl(impl, head_dim, cache_dtype)
    return kind != "xla"


def mask_window(mask_b1s):
    """(start_b, end_b) of each row's readable slots, for a mask whose true slots are contiguous
    (first true slot, one past the last; (0, 0) for a row that reads nothing)."""
    valid_bs = mask_b1s[:, 0, :]
    s = valid_bs.shape[-1]
    any_b = jnp.any(valid_bs, axis=-1)
    start_b = jnp.argmax(valid_bs, axis=-1).astype(jnp.int32)
    end_b = (s - jnp.argmax(valid_bs[:, ::-1], axis=-1)).astype(jnp.int32)
    return jnp.where(any_b, start_b, 0), jnp.where(any_b, end_b, 0)


def window_decode_attention(q_b1hd, k_bskd, v_bskd, mask_b1s, impl: str):
    """One query per row over the readable window of a cache, through the kernel: (out, lse fp32)."""
    start_b, end_b = mask_window(mask_b1s)
    return decode_attention(q_b1hd, k_bskd, v_bskd, end_b, start_b, impl=impl)


def shared_prefix_attention(q_bthd, k_bskd, v_bskd, mask_bts, cache, impl: str):
    """Each row over its prompt group's shared cache part (the first shared_len entries, read once per
    group with the group's queries stacked) and its own suffix (masked), merged exactly."""
    b, t, h, d = q_bthd.shape
    groups = cache["shared_k"].shape[0]
    q_group = q_bthd.reshape(groups, (b // groups) * t, h, d)
    out_s, lse_s = decode_attention(q_group, cache["shared_k"], cache["shared_v"], cache["shared_len"], impl=impl)
    if t == 1 and uses_decode_kernel(impl, d, k_bskd.dtype):
        out_o, lse_o = window_decode_attention(q_bthd, k_bskd, v_bskd, mask_bts, impl)
    else:
        out_o, lse_o = masked_partial(q_bthd, k_bskd, v_bskd, mask_bts)
    out, _ = merge_two(out_s.reshape(b, t, h, d).astype(jnp.float32), lse_s.reshape(b, t, h),
                       out_o.astype(jnp.float32), lse_o)
    return out.astype(q_bthd.dtype)


def attention(q_bthd, k_bskd, v_bskd, mask_bts, *, impl: str = "xla", cache: dict | None = None):
    """The entry point (see the module doc). `mask_bts` is a (batch, q, kv) bool array or a CausalMask
    (after resolve_mask); `cache` is the layer's cache dict when k, v come from one (it may carry a
    shared prompt part: shared_k, shared_v, shared_len); `impl` is model.attention_impl."""
    if isinstance(mask_bts, CausalMask):  # no cache: the stack kept the description for the fused path
        return fused_causal_attention(q_bthd, k_bskd, v_bskd, mask_bts.block)
    if cache is not None and "shared_k" in cache:
        return shared_prefix_attention(q_bthd, k_bskd, v_bskd, mask_bts, cache, impl)
    if cache is not None and q_bthd.shape[1] == 1 and uses_decode_kernel(impl, q_bthd.shape[-1], k_bskd.dtype):
        return window_decode_attention(q_bthd, k_bskd, v_bskd, mask_bts, impl)[0]
    return attend(q_bthd, k_bskd, v_bskd, mask_bts)
