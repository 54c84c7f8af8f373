"""Pick a decode-attention implementation, and run it sharded.

    decode_attention(q, k_cache, v_cache, lengths, starts=None, impl="auto")
        auto   -> Pallas kernel on GPU (Triton) or TPU (Mosaic), XLA path on CPU
                  (and for shapes the kernels do not take: head_dim outside [1, 256], or a
                  dtype other than f32/bf16/f16; common.kernel_shape_problem)
        xla    -> pure-jnp path (reference.decode_attention_xla)
        pallas -> the kernel for the platform; on CPU it runs in interpret mode
                  (the GPU kernel body unless target="tpu")

Shapes: q (batch, num_queries, heads, head_dim); caches (batch, cache_len, kv_heads,
head_dim); lengths, starts (batch,): each row reads cache slots [start, length) (start
defaults to 0).  Returns (out (q's dtype), lse float32).

kernel_sites(fn, *args) counts the decode-attention kernel launches in fn's traced
program (the proof that a path runs the kernel, whatever platform traces it).

Gradients: the kernels are forward-only; decode_attention carries a custom_vjp
whose backward differentiates the pure-jnp reference (recomputed), so jax.grad
works through every impl (useful for tests, not a fast training path).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.extend import core as jax_core
from jax.sharding import PartitionSpec as P

from pallas_kernels import common
from pallas_kernels.decode_attention_gpu import decode_attention_gpu
from pallas_kernels.decode_attention_tpu import decode_attention_tpu
from pallas_kernels.reference import decode_attention_reference, decode_attention_xla

IMPLS = ("auto", "xla", "pallas")


def resolve_impl(impl: str, head_dim: int, dtype, *, target=None, interpret=None, platform=None):
    """-> (kind, interpret) with kind in {'xla', 'gpu', 'tpu'}: what decode_attention will run on `platform`
    (default: the backend in use)."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    platform = platform or common.on_platform()
    if impl == "xla":
        return "xla", False
    if target is None:
        target = platform if platform in ("gpu", "tpu") else "gpu"
    if target not in ("gpu", "tpu"):
        raise ValueError(f"target must be 'gpu' or 'tpu', got {target!r}")
    if impl == "auto":
        if platform not in ("gpu", "tpu") or common.kernel_shape_problem(head_dim, dtype, target):
            return "xla", False
    if interpret is None:
        interpret = platform != target
    return target, interpret


def _run(kind, interpret, scale, kernel_kwargs, q, k, v, lengths, starts):
    if kind == "xla":
        return decode_attention_xla(q, k, v, lengths, starts_b=starts, scale=scale)
    fn = decode_attention_gpu if kind == "gpu" else decode_attention_tpu
    return fn(q, k, v, lengths, starts, scale=scale, interpret=interpret, **dict(kernel_kwargs))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _attend(kind, interpret, scale, kernel_kwargs, q, k, v, lengths, starts):
    return _run(kind, interpret, scale, kernel_kwargs, q, k, v, lengths, starts)


def _attend_fwd(kind, interpret, scale, kernel_kwargs, q, k, v, lengths, starts):
    return _run(kind, interpret, scale, kernel_kwargs, q, k, v, lengths, starts), (q, k, v, lengths, starts)


def _attend_bwd(kind, interpret, scale, kernel_kwargs, res, cotangents):
    q, k, v, lengths, starts = res
    _, vjp = jax.vjp(lambda q_, k_, v_: decode_attention_reference(q_, k_, v_, lengths, starts_b=starts,
                                                                   scale=scale), q, k, v)
    dq, dk, dv = vjp(cotangents)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None


_attend.defvjp(_attend_fwd, _attend_bwd)


def decode_attention(q_bqhd, k_bskd, v_bskd, lengths_b, starts_b=None, *, scale=None, impl="auto",
                     interpret=None, target=None, **kernel_kwargs):
    """Decode attention over one cache with the implementation chosen by `impl` (see module doc).

    interpret: None = only where the kernel's platform is not the current one (CPU); True forces
    interpret mode (e.g. testing on any host).  target: 'gpu' | 'tpu' kernel for impl='pallas'
    (default: the current platform; GPU body on CPU).  kernel_kwargs (block_k, num_splits, ...)
    go to the kernel.
    """
    common.check_shapes(q_bqhd, k_bskd, v_bskd, lengths_b, starts_b)
    kind, interp = resolve_impl(impl, q_bqhd.shape[-1], k_bskd.dtype, target=target, interpret=interpret)
    if kind != "xla" and (problem := common.kernel_shape_problem(q_bqhd.shape[-1], k_bskd.dtype, kind)):
        raise ValueError(f"impl={impl!r}: the decode kernel cannot run: {problem}")
    scale = None if scale is None else float(scale)
    kw = tuple(sorted(kernel_kwargs.items())) if kind != "xla" else ()
    starts_b, lengths_b = common.window(lengths_b, starts_b, k_bskd.shape[1])
    return _attend(kind, interp, scale, kw, q_bqhd, k_bskd, v_bskd, lengths_b, starts_b)


KERNEL_NAMES = ("photon_decode_attention_gpu", "photon_decode_attention_tpu")


def _count_sites(jaxpr) -> int:
    count = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "pallas_call" and eqn.params.get("name") in KERNEL_NAMES:
            count += 1
        count += sum(_count_sites(sub) for sub in jax_core.jaxprs_in_params(eqn.params))
    return count


def kernel_sites(fn, *args, **kwargs) -> int:
    """How many decode-attention kernel launches fn's program holds (its jaxpr, every branch and loop
    body counted once): 0 means the program never runs a kernel."""
    return _count_sites(jax.make_jaxpr(fn)(*args, **kwargs).jaxpr)


def _spec4(cache_spec):
    entries = tuple(cache_spec)
    if len(entries) > 4:
        raise ValueError(f"cache_spec has {len(entries)} entries for a 4-d cache")
    entries = entries + (None,) * (4 - len(entries))
    if entries[3] is not None:
        raise ValueError("head_dim of the cache cannot be sharded")
    return entries


def sharded_decode_attention(q_bqhd, k_bskd, v_bskd, lengths_b, starts_b=None, *, mesh, cache_spec, scale=None,
                             impl="auto", interpret=None, target=None, **kernel_kwargs):
    """decode_attention inside jax.shard_map, the cache laid out as `cache_spec`.

    cache_spec: PartitionSpec of the (batch, cache_len, kv_heads, head_dim) cache, e.g.
    P('data', None, 'tensor', None) (derived by the caller from its logical rules).  q is
    sharded like the cache on batch and heads (query heads in contiguous groups follow their
    kv heads), lengths on batch.  A sharded cache_len axis is supported too: each shard attends
    its slice and the shards are merged exactly (pmax/psum of the (out, lse) merge).
    Returns (out, lse) sharded as q (lse without head_dim).
    """
    batch_ax, seq_ax, kv_ax, _ = _spec4(cache_spec)
    cache_p = P(batch_ax, seq_ax, kv_ax, None)
    q_p = P(batch_ax, None, kv_ax, None)
    lse_p = P(batch_ax, None, kv_ax)
    len_p = P(batch_ax)

    def local(q, k, v, lengths, starts):
        if seq_ax is not None:
            local_len = k.shape[1]
            offset = jax.lax.axis_index(seq_ax) * local_len
            lengths = jnp.clip(lengths - offset, 0, local_len)
            starts = jnp.clip(starts - offset, 0, local_len)
        out, lse = decode_attention(q, k, v, lengths, starts, scale=scale, impl=impl, interpret=interpret,
                                    target=target, **kernel_kwargs)
        if seq_ax is not None:                     # exact merge across the cache_len shards
            top = jax.lax.pmax(lse, seq_ax)
            top = jnp.where(jnp.isfinite(top), top, 0.0)
            w = jnp.exp(lse - top)                 # 0 for shards with nothing valid
            total = jax.lax.psum(w, seq_ax)
            num = jax.lax.psum(w[..., None] * out.astype(jnp.float32), seq_ax)
            nonempty = total > 0
            total_safe = jnp.where(nonempty, total, 1.0)
            out = (num / total_safe[..., None]).astype(q.dtype)
            lse = jnp.where(nonempty, top + jnp.log(total_safe), -jnp.inf)
        return out, lse

    fn = jax.shard_map(local, mesh=mesh, in_specs=(q_p, cache_p, cache_p, len_p, len_p),
                       out_specs=(q_p, lse_p), check_vma=False)
    starts_b, lengths_b = common.window(lengths_b, starts_b, k_bskd.shape[1])
    return fn(q_bqhd, k_bskd, v_bskd, lengths_b, starts_b)
