"""`project` / `Dense` (model/projection.py): value and gradients equal an fp32 einsum of the same
rounded operands, on the CPU bf16 path (hand-written backward) and the generic path; the weight
gradient is not rounded to bf16; `Dense` keeps nn.Dense's parameters; and in the compiled CPU train
step every matmul takes bf16 operands (XLA:CPU upcasts any bf16 dot its matmul library cannot take,
which is what the hand-written backward avoids)."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

import photon_jax.model.projection as projection
from photon_jax.model.projection import Dense, materialised_transpose, project

CASES = {  # x shape, kernel shape, contracted axes
    "dense": ((2, 6, 16), (16, 24), 1),
    "heads-out": ((2, 6, 16), (16, 3, 5), 1),
    "heads-in": ((2, 6, 4, 8), (4, 8, 12), 2),
}


def operands(name, dtype):
    x_shape, k_shape, contract = CASES[name]
    rng = np.random.default_rng(len(name))
    x = jnp.asarray(rng.standard_normal(x_shape), dtype)
    kernel = jnp.asarray(rng.standard_normal(k_shape), jnp.float32)
    return x, kernel, contract


def reference(x, kernel, contract, dtype):
    """The fp32 einsum of the operands rounded to the compute dtype (what the matmul must equal)."""
    x32 = x.astype(dtype).astype(jnp.float32)
    k32 = kernel.astype(dtype).astype(jnp.float32)
    letters = "abcdefgh"
    lead, shared = letters[:x.ndim - contract], letters[x.ndim - contract:x.ndim]
    tail = "uvwxyz"[:kernel.ndim - contract]
    return jnp.einsum(f"{lead}{shared},{shared}{tail}->{lead}{tail}", x32, k32, precision="highest")


@pytest.fixture(params=["cpu-bf16", "generic"])
def path(request, monkeypatch):
    """cpu-bf16: the custom-VJP matmul (this machine is a CPU); generic: one lax.dot_general, as on GPU/TPU."""
    if request.param == "generic":
        monkeypatch.setattr(projection.jax, "default_backend", lambda: "gpu")
    return request.param


@pytest.mark.parametrize("out_dtype", [None, jnp.float32])
@pytest.mark.parametrize("name", list(CASES))
def test_project_equals_the_fp32_einsum_forward_and_backward(name, out_dtype, path):
    dtype = jnp.bfloat16
    x, kernel, contract = operands(name, dtype)
    y = jax.jit(lambda x, k: project(x, k, contract, dtype, out_dtype))(x, kernel)
    ref = reference(x, kernel, contract, dtype)
    assert y.dtype == (out_dtype or dtype) and y.shape == ref.shape
    tol = 1e-5 if out_dtype == jnp.float32 else 1e-2  # fp32 accumulation; a bf16 result is rounded once
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(ref), rtol=tol, atol=tol)

    cotangent = jnp.asarray(np.random.default_rng(7).standard_normal(ref.shape), jnp.float32)

    def loss(fn):
        return lambda x, k: jnp.sum(fn(x, k).astype(jnp.float32) * cotangent)

    dx, dk = jax.jit(jax.grad(loss(lambda x, k: project(x, k, contract, dtype, out_dtype)), argnums=(0, 1)))(x, kernel)
    ct = cotangent.astype(dtype).astype(jnp.float32) if out_dtype is None else cotangent
    ref_dx, ref_dk = jax.grad(lambda x, k: jnp.sum(reference(x, k, contract, dtype) * ct), argnums=(0, 1))(
        x.astype(jnp.float32), kernel)
    assert dx.dtype == x.dtype and dk.dtype == kernel.dtype
    for grad, ref_grad in ((dx, ref_dx), (dk, ref_dk)):
        scale = float(jnp.max(jnp.abs(ref_grad)))
        np.testing.assert_allclose(np.asarray(grad, np.float32) / scale, np.asarray(ref_grad) / scale, atol=1e-2)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU path's hand-written backward is what is tested")
def test_the_cpu_weight_gradient_keeps_fp32_precision():
    """dW = x^T . g accumulated and returned in fp32: far closer to the fp32 reference than bf16's
    ~2^-9 relative rounding (JAX's own backward of a bf16 dot rounds dW to bf16)."""
    x, kernel, _ = operands("dense", jnp.bfloat16)
    g = jnp.asarray(np.random.default_rng(3).standard_normal((2, 6, 24)), jnp.bfloat16)
    dk = jax.grad(lambda k: jnp.sum(project(x, k, 1, jnp.bfloat16, jnp.float32) * g.astype(jnp.float32)))(kernel)
    ref = jnp.einsum("btk,btn->kn", x.astype(jnp.float32), g.astype(jnp.float32), precision="highest")
    rel = np.abs(np.asarray(dk) - np.asarray(ref)) / np.maximum(np.abs(np.asarray(ref)), 1e-3)
    assert dk.dtype == jnp.float32 and float(np.max(rel)) < 1e-5


def test_materialised_transpose_is_the_transpose():
    a = jnp.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(np.asarray(jax.jit(materialised_transpose)(a)), np.asarray(a).T)


def test_dense_keeps_flax_dense_parameters():
    """Same names, shapes and initial values as nn.Dense, so checkpoints and parameter trees carry over."""
    x = jnp.ones((2, 5, 16))
    kw = dict(features=12, use_bias=True, kernel_init=nn.initializers.normal(0.02),
              bias_init=nn.initializers.normal(0.02))
    ours = Dense(**kw).init(jax.random.PRNGKey(0), x)
    flax = nn.Dense(**kw).init(jax.random.PRNGKey(0), x)
    assert jax.tree.structure(ours) == jax.tree.structure(flax)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(flax)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_allclose(np.asarray(Dense(**kw).apply(ours, x)), np.asarray(nn.Dense(**kw).apply(flax, x)),
                               rtol=1e-6)


def dot_operand_types(hlo_text):
    """(lhs, rhs) element types of every dot in an optimised HLO module."""
    types = dict(re.findall(r"%([\w.\-]+) = (\w+)\[", hlo_text))
    return [(types[a], types[b]) for a, b in re.findall(r" dot\(%([\w.\-]+), %([\w.\-]+)\)", hlo_text)]


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's bf16 matmul support is what is tested")
@pytest.mark.parametrize("family", ["vanilla", "photon"])
def test_every_matmul_of_the_cpu_train_step_takes_bf16_operands(family):
    from photon_jax.bench.models import random_params
    from photon_jax.train.state import learning_rate_schedule, make_optimizer
    from photon_jax.train.step import make_train_step

    cfg = tiny_config(family=family, model__dtype="bfloat16", model__attention_impl="xla")
    tx, schedule = make_optimizer(cfg), learning_rate_schedule(cfg)
    params = random_params(cfg.model, seed=0)
    state = {"step": jnp.zeros((), jnp.int32), "skipped": jnp.zeros((), jnp.int32), "params": params,
             "opt_state": tx.init(params)}
    tokens = jnp.zeros((2, cfg.data.seq_len), jnp.int32)
    batch = {"tokens": tokens, "mask": jnp.ones(tokens.shape, jnp.float32)}
    hlo = jax.jit(make_train_step(cfg, tx, schedule)).lower(state, batch).compile().as_text()
    types = dot_operand_types(hlo)
    assert len(types) >= 21  # at least forward + both backward matmuls of one layer's 7 projections
    assert all(t == ("bf16", "bf16") for t in types), sorted(set(types))
