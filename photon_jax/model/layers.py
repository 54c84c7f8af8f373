"""LLaMA building blocks: RMSNorm, rotary embeddings, grouped-query attention, SwiGLU.

Every parameter carries logical axis names (embed, heads, kv_heads, head_dim, mlp,
vocab); the sharding rules map them to mesh axes. No mesh axis is named here.

Attention takes an optional per-layer KV cache {"k", "v"} of shape
(batch, cache_len, kv_heads, head_dim): new keys/values are written at each row's
`write_index_b`, and the caller's mask says which cache slots each query may read. The
attention itself (full, cached decode, shared-prompt cascade) is attention.py's.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from photon_jax.config import ModelConfig
from photon_jax.model.attention import CausalMask, attention, resolve_mask
from photon_jax.model.projection import Dense, elementwise_dtype, project

Dtype = Any


def dtype_of(name: str) -> Dtype:
    return jnp.dtype(name)


def logical_init(init, axes):
    return nn.with_logical_partitioning(init, axes)


@dataclasses.dataclass(frozen=True)
class StackSpec:
    """What one Transformer stack needs from the model config."""

    width: int
    ffn_width: int
    num_heads: int
    kv_heads: int
    head_dim: int
    rope_theta: float
    norm_eps: float
    dtype: str
    param_dtype: str
    scan_layers: bool
    remat: str
    attention_impl: str = "xla"
    scan_unroll: int = 1

    @classmethod
    def from_model(cls, m: ModelConfig) -> "StackSpec":
        return cls(m.width, m.ffn_width, m.num_heads, m.kv_heads, m.head_width, m.rope_theta, m.norm_eps,
                   m.dtype, m.param_dtype, m.scan_layers, m.remat, m.attention_impl, m.scan_unroll)


class RMSNorm(nn.Module):
    eps: float = 1e-5
    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", logical_init(nn.initializers.ones, ("embed",)), (x.shape[-1],),
                           dtype_of(self.param_dtype))
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (normed * scale.astype(jnp.float32)).astype(dtype_of(self.dtype))


def apply_rope(x_bthd, positions_bt, theta: float):
    """Rotary embedding on the last axis (split-half convention), computed in fp32."""
    half = x_bthd.shape[-1] // 2
    inv_freq = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles_bth = positions_bt.astype(jnp.float32)[..., None] * inv_freq
    sin, cos = jnp.sin(angles_bth)[:, :, None, :], jnp.cos(angles_bth)[:, :, None, :]
    x1, x2 = jnp.split(x_bthd.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x_bthd.dtype)


def write_cache(cache_bskd, new_btkd, write_index_b):
    """Write each row's new entries at its own offset."""
    def one(row_skd, new_tkd, index):
        return jax.lax.dynamic_update_slice(row_skd, new_tkd.astype(row_skd.dtype), (index, 0, 0))
    return jax.vmap(one)(cache_bskd, new_btkd, write_index_b)


def write_stacked_cache(cache_lbskd, layer: int, new_btkd, write_index_b):
    """write_cache into layer `layer` of a layer-stacked cache, as one scatter into the whole array.

    Unrolled layers used to slice their layer out, write it and stack every layer back: two copies of
    the whole cache per decode step, most of a CPU step's time. A chain of scatters into the one
    array is done in place. Starts are clamped as dynamic_update_slice clamps them, so both agree.
    """
    b, t = new_btkd.shape[:2]
    start_b = jnp.clip(write_index_b, 0, cache_lbskd.shape[2] - t)
    pos_bt = start_b[:, None] + jnp.arange(t, dtype=start_b.dtype)[None, :]
    return cache_lbskd.at[layer, jnp.arange(b)[:, None], pos_bt].set(new_btkd.astype(cache_lbskd.dtype),
                                                                       mode="promise_in_bounds")


class Projection(nn.Module):
    """A bias-free projection with an explicit N-d kernel whose first `contract` axes meet x's last
    ones (DenseGeneral reshapes its kernel during init, which breaks logical sharding constraints on
    multi-axis kernels)."""

    shape: tuple[int, ...]
    contract: int
    axes: tuple[str, ...]
    stddev: float
    dtype: str
    param_dtype: str
    out_dtype: Any = None

    @nn.compact
    def __call__(self, x):
        init = logical_init(nn.initializers.normal(stddev=self.stddev), self.axes)
        kernel = self.param("kernel", init, self.shape, dtype_of(self.param_dtype))
        return project(x, kernel, self.contract, dtype_of(self.dtype), self.out_dtype)


class Attention(nn.Module):
    """`layer` set: `cache` is the whole layer-stacked {"k", "v"} and comes back so, this layer written."""

    spec: StackSpec
    layer: int | None = None

    @nn.compact
    def __call__(self, x_btd, positions_bt, mask_bts, cache=None, write_index_b=None):
        s = self.spec

        def proj(name, heads, axes, out_dtype=None):
            return Projection((s.width, heads, s.head_dim), 1, axes, s.width ** -0.5, s.dtype, s.param_dtype,
                              out_dtype, name=name)(x_btd)

        # q and k leave the matmul in the dtype RoPE computes in (fp32 on CPU: no bf16 round trip).
        dtype, rope_dtype = dtype_of(s.dtype), elementwise_dtype(s.dtype)
        q = proj("query", s.num_heads, ("embed", "heads", "head_dim"), rope_dtype)
        k = proj("key", s.kv_heads, ("embed", "kv_heads", "head_dim"), rope_dtype)
        v = proj("value", s.kv_heads, ("embed", "kv_heads", "head_dim"))
        q = apply_rope(q, positions_bt, s.rope_theta).astype(dtype)
        k = apply_rope(k, positions_bt, s.rope_theta).astype(dtype)
        new_cache = None
        if cache is not None:
            if self.layer is None:
                new_cache = {"k": write_cache(cache["k"], k, write_index_b),
                             "v": write_cache(cache["v"], v, write_index_b)}
                k_all, v_all = new_cache["k"], new_cache["v"]
            else:
                new_cache = {name: write_stacked_cache(cache[name], self.layer, new, write_index_b)
                             for name, new in (("k", k), ("v", v))}
                k_all, v_all = new_cache["k"][self.layer], new_cache["v"][self.layer]
                cache = {"k": k_all, "v": v_all}  # what attention() reads: this layer's
            if isinstance(mask_bts, CausalMask):  # prefill of an empty cache from slot 0: fused over the new keys
                cache = None
            else:
                k, v = k_all, v_all
        out = attention(q, k, v, mask_bts, impl=s.attention_impl, cache=cache)
        y = Projection((s.num_heads, s.head_dim, s.width), 2, ("heads", "head_dim", "embed"),
                       (s.num_heads * s.head_dim) ** -0.5, s.dtype, s.param_dtype, name="out")(out)
        return y, new_cache


class SwiGLU(nn.Module):
    spec: StackSpec

    @nn.compact
    def __call__(self, x_btd):
        s = self.spec
        dtype, pdtype = dtype_of(s.dtype), dtype_of(s.param_dtype)
        init_in = logical_init(nn.initializers.normal(stddev=s.width ** -0.5), ("embed", "mlp"))
        init_out = logical_init(nn.initializers.normal(stddev=s.ffn_width ** -0.5), ("mlp", "embed"))
        # gate and up leave the matmul in the dtype SiLU computes in (fp32 on CPU).
        dense_in = functools.partial(Dense, s.ffn_width, use_bias=False, dtype=dtype, param_dtype=pdtype,
                                     out_dtype=elementwise_dtype(dtype), kernel_init=init_in)
        gate, up = dense_in(name="gate")(x_btd), dense_in(name="up")(x_btd)
        hidden = nn.with_logical_constraint(jax.nn.silu(gate) * up, ("batch", "length", "mlp"))
        down = Dense(s.width, use_bias=False, dtype=dtype, param_dtype=pdtype, kernel_init=init_out, name="down")
        return down(hidden)


class Block(nn.Module):
    """Pre-norm LLaMA block. Signature fits nn.scan: (x, *broadcast, cache) -> (x, cache)."""

    spec: StackSpec
    layer: int | None = None  # Attention.layer: the cache is the layer-stacked one

    @nn.compact
    def __call__(self, x_btd, positions_bt, mask_bts, write_index_b, cache):
        s = self.spec
        norm = lambda name: RMSNorm(s.norm_eps, s.dtype, s.param_dtype, name=name)  # noqa: E731
        attention = Attention(s, self.layer, name="attention")
        attn_out, new_cache = attention(norm("attention_norm")(x_btd), positions_bt, mask_bts, cache, write_index_b)
        x_btd = x_btd + attn_out
        x_btd = x_btd + SwiGLU(s, name="mlp")(norm("mlp_norm")(x_btd))
        x_btd = nn.with_logical_constraint(x_btd, ("batch", "length", "embed"))
        return x_btd, new_cache


class Stack(nn.Module):
    """num_layers Blocks (scanned or unrolled, optionally rematerialised) + a final RMSNorm.

    cache, when given, is {"k", "v"} with a leading layer axis.
    """

    spec: StackSpec
    num_layers: int

    @nn.compact
    def __call__(self, x_btd, positions_bt, mask_bts, cache=None, write_index_b=None):
        s = self.spec
        block_cls = Block
        if s.remat != "none":
            policy = jax.checkpoint_policies.dots_with_no_batch_dims_saveable if s.remat == "dots" else None
            block_cls = nn.remat(Block, policy=policy, prevent_cse=not s.scan_layers)
        x_btd = x_btd.astype(dtype_of(s.dtype))
        kv_length = None if cache is None else cache["k"].shape[2]  # (layers, batch, slots, kv_heads, head_dim)
        mask_bts = resolve_mask(mask_bts, x_btd.shape[1], s.attention_impl, kv_length)  # once per stack
        if s.scan_layers:
            scanned = nn.scan(
                block_cls,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, 0),
                length=self.num_layers,
                unroll=min(s.scan_unroll, self.num_layers),
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x_btd, new_cache = scanned(s, name="layers")(x_btd, positions_bt, mask_bts, write_index_b, cache)
        elif cache is not None and set(cache) == {"k", "v"}:  # written in place (write_stacked_cache)
            for i in range(self.num_layers):
                x_btd, cache = block_cls(s, i, name=f"layers_{i}")(x_btd, positions_bt, mask_bts, write_index_b,
                                                                   cache)
            new_cache = cache
        else:
            new_layers = []
            for i in range(self.num_layers):
                layer_cache = None if cache is None else jax.tree.map(lambda c: c[i], cache)
                x_btd, layer_new = block_cls(s, name=f"layers_{i}")(x_btd, positions_bt, mask_bts, write_index_b,
                                                                     layer_cache)
                new_layers.append(layer_new)
            new_cache = None if cache is None else jax.tree.map(lambda *c: jnp.stack(c), *new_layers)
        x_btd = RMSNorm(s.norm_eps, s.dtype, s.param_dtype, name="final_norm")(x_btd)
        return x_btd, new_cache
