"""Learned projections (x . kernel) with fp32 accumulation, and a backward XLA:CPU can run in bf16.

`project` contracts the last `contract` axes of x with the first `contract` axes of a kernel, the
operands in the compute dtype and the sum in fp32. On GPU/TPU it is one `lax.dot_general`, which
JAX differentiates and XLA maps onto cuBLAS / the MXU with any operand transposed for free.

On CPU, with bf16 operands, it is a 2-D matmul with its own VJP. Why: XLA:CPU's matmul library
(YNNPACK) takes bf16 only as bf16 x bf16 -> fp32 with both operands row-major and the contraction
over the lhs's last and the rhs's first axis. Every other bf16 dot (a bf16 result, or an operand
that JAX's autodiff transposed into the dot's dimension numbers) becomes an fp32 dot with converts
around it, about twice as slow (docs/performance.md). So the forward asks for an fp32 result, and the
backward computes dx = g . w^T and dw = x^T . g from transposes materialised in memory (a weight-sized
and an activation-sized copy) where XLA cannot fold them back into the dots. The weight gradient
stays fp32 (JAX's own backward of a bf16 dot rounds it to bf16 first). Under a multi-device mesh the
transposes are plain ones (a forced copy cannot be split the way the batch is; docs/scale-out.md).

`Dense` is flax's `nn.Dense` parameterisation (same names, shapes and initialisers, so checkpoints
and parameter trees do not change) computed through `project`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from pallas_kernels.common import on_platform

Dtype = Any


def project(x, kernel, contract: int, dtype: Dtype, out_dtype: Dtype | None = None):
    """x[..., *K] . kernel[*K, *N] -> [..., *N]: operands in `dtype`, fp32 accumulation, result in
    `out_dtype` (default `dtype`)."""
    dtype = jnp.dtype(dtype)
    out_dtype = jnp.dtype(out_dtype or dtype)
    if x.shape[x.ndim - contract:] != kernel.shape[:contract]:
        raise ValueError(f"project: x {x.shape} and kernel {kernel.shape} do not share {contract} contracted axes")
    if on_cpu_bf16(dtype):
        return _project_cpu(x, kernel, contract, dtype, out_dtype)
    dims = ((tuple(range(x.ndim - contract, x.ndim)), tuple(range(contract))), ((), ()))
    y = jax.lax.dot_general(x.astype(dtype), kernel.astype(dtype), dims,
                            preferred_element_type=jnp.float32 if out_dtype == jnp.float32 else None)
    return y.astype(out_dtype)


_TARGET = contextvars.ContextVar("photon_jax_target_platform", default="")


@contextlib.contextmanager
def compiling_for(platform: str | None):
    """Trace projections for `platform` ("gpu", "tpu", "cpu"; None or "" = the backend in use): lets a CPU
    box lower the code path an accelerator would run, to plan its memory and communication."""
    token = _TARGET.set(platform or "")
    try:
        yield
    finally:
        _TARGET.reset(token)


def target_platform() -> str:
    return _TARGET.get() or on_platform()


def on_cpu_bf16(dtype: Dtype) -> bool:
    """Whether projections take the CPU path: XLA:CPU with bf16 compute."""
    return target_platform() == "cpu" and jnp.dtype(dtype) == jnp.bfloat16


def elementwise_dtype(dtype: Dtype) -> Dtype:
    """The dtype a projection should hand its result to elementwise math in (SwiGLU, RoPE, the loss's
    softmax): fp32 on
    CPU with bf16 compute (XLA:CPU evaluates bf16 arithmetic element by element through fp32 anyway,
    so a bf16 result only adds a rounding pass), else the compute dtype (GPU/TPU read and write half
    the bytes)."""
    return jnp.dtype(jnp.float32) if on_cpu_bf16(dtype) else jnp.dtype(dtype)


def materialised_transpose(a_mn):
    """a_mn.T as a new row-major array. A plain transpose is folded into the consuming dot's
    dimension numbers (and the optimisation barrier alone keeps the transpose's column-major layout);
    flattening behind the barrier forces the copy."""
    m, n = a_mn.shape
    return jax.lax.optimization_barrier(a_mn.T.reshape(m * n)).reshape(n, m)


def _one_device() -> bool:
    mesh = jax.sharding.get_abstract_mesh()
    return mesh.empty or mesh.size == 1


def _project_cpu(x, kernel, contract, dtype, out_dtype):
    k = math.prod(kernel.shape[:contract])
    static = (dtype, out_dtype, x.dtype, kernel.dtype)  # hashable: the custom VJP's non-differentiable argument
    y_mn = _matmul(x.reshape(-1, k), kernel.reshape(k, -1), static)
    return y_mn.reshape(x.shape[:x.ndim - contract] + kernel.shape[contract:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _matmul(x_mk, w_kn, static):
    return _matmul_fwd(x_mk, w_kn, static)[0]


def _matmul_fwd(x_mk, w_kn, static):
    dtype, out_dtype = static[:2]
    x_mk, w_kn = x_mk.astype(dtype), w_kn.astype(dtype)
    y_mn = jnp.dot(x_mk, w_kn, preferred_element_type=jnp.float32).astype(out_dtype)
    return y_mn, (x_mk, w_kn)


def _matmul_bwd(static, residuals, g_mn):
    dtype, _, x_dtype, w_dtype = static
    x_mk, w_kn = residuals
    # Under a sharded mesh the copies cannot be made shard by shard: the flattened transpose of an array
    # split along its rows is split along no axis, and XLA's partitioner replicates it (docs/scale-out.md).
    # Plain transposes there, which the partitioner folds into the dots' layouts.
    transpose = materialised_transpose if _one_device() else jnp.transpose
    g_mn = g_mn.astype(dtype)
    dx_mk = jnp.dot(g_mn, transpose(w_kn), preferred_element_type=jnp.float32)
    dw_kn = jnp.dot(transpose(x_mk), g_mn, preferred_element_type=jnp.float32)
    return dx_mk.astype(x_dtype), dw_kn.astype(w_dtype)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


class Dense(nn.Module):
    """y = x . kernel (+ bias) over the last axis; parameters as flax's nn.Dense names them."""

    features: int
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    out_dtype: Dtype | None = None
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), self.param_dtype)
        y = project(x, kernel, 1, self.dtype, self.out_dtype)
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            y = y + bias.astype(y.dtype)
        return y
