"""`attend` (hand-written backward, compute-dtype matmuls) equals `reference_attention` (the fp32
definition, differentiated by JAX) in value and in the gradients of q, k and v, for every mask the
models build: causal, block-local, grouped-query, a batch-1 mask broadcast over the batch, decode rows
(one query over a longer cache) and arbitrary masks with fully masked rows; and the models' XLA path
runs it once per layer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_variables, tiny_config
from jax.extend import core as jax_core

from photon_jax.model import build_model
from photon_jax.model.attention import CausalMask
from photon_jax.model.softmax_attention import attend, reference_attention

TOLERANCES = {jnp.float32: 2e-5, jnp.bfloat16: 3e-2}


def qkv(seed, batch, q_len, kv_len, heads, kv_heads, head_dim, dtype):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.standard_normal(shape), dtype) for shape in
            ((batch, q_len, heads, head_dim), (batch, kv_len, kv_heads, head_dim), (batch, kv_len, kv_heads, head_dim)))


def random_mask(seed, batch, q_len, kv_len):
    """Each key visible with probability 1/2; row 0 of every sequence sees nothing."""
    mask = np.random.default_rng(seed).random((batch, q_len, kv_len)) < 0.5
    mask[:, 0, :] = False
    return jnp.asarray(mask)


MASKS = {
    "causal-gqa": (lambda: CausalMask().dense(12), dict(batch=2, q_len=12, kv_len=12, heads=8, kv_heads=2)),
    "block-local": (lambda: CausalMask(4).dense(12), dict(batch=2, q_len=12, kv_len=12, heads=4, kv_heads=4)),
    "random-empty-rows": (lambda: random_mask(0, 3, 6, 10), dict(batch=3, q_len=6, kv_len=10, heads=4, kv_heads=1)),
    "decode-row": (lambda: jnp.arange(16)[None, None, :] < jnp.array([5, 16])[:, None, None],
                   dict(batch=2, q_len=1, kv_len=16, heads=4, kv_heads=2)),
}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("name", list(MASKS))
def test_attend_equals_the_reference_forward_and_backward(name, dtype):
    make_mask, dims = MASKS[name]
    mask = make_mask()
    q, k, v = qkv(len(name), head_dim=16, dtype=dtype, **dims)
    tol = TOLERANCES[dtype]
    out, ref = attend(q, k, v, mask), reference_attention(q, k, v, mask)
    assert out.dtype == dtype and out.shape == q.shape
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref, np.float32), atol=tol, rtol=tol)

    cotangent = jnp.asarray(np.random.default_rng(1).standard_normal(q.shape), dtype)

    def loss(fn):  # a random linear functional: every output element gets its own weight
        return lambda q, k, v: jnp.sum(fn(q, k, v, mask).astype(jnp.float32) * cotangent.astype(jnp.float32))

    grads = jax.jit(jax.grad(loss(attend), argnums=(0, 1, 2)))(q, k, v)
    ref_grads = jax.grad(loss(reference_attention), argnums=(0, 1, 2))(q, k, v)
    for grad, ref_grad in zip(grads, ref_grads):
        assert grad.dtype == dtype
        scale = float(jnp.max(jnp.abs(ref_grad.astype(jnp.float32)))) or 1.0
        np.testing.assert_allclose(np.asarray(grad, np.float32) / scale, np.asarray(ref_grad, np.float32) / scale,
                                   atol=tol, rtol=0)


def test_fully_masked_rows_give_zeros_and_pass_no_gradient():
    q, k, v = qkv(3, batch=2, q_len=4, kv_len=4, heads=2, kv_heads=2, head_dim=8, dtype=jnp.float32)
    mask = jnp.ones((2, 4, 4), bool).at[1, 2, :].set(False)
    out = attend(q, k, v, mask)
    assert np.all(np.asarray(out[1, 2]) == 0) and np.all(np.isfinite(np.asarray(out)))
    dq = jax.grad(lambda q: jnp.sum(attend(q, k, v, mask)))(q)
    assert np.all(np.asarray(dq[1, 2]) == 0) and np.any(np.asarray(dq[1, 1]) != 0)


def attend_runs_per_layer_scan(jaxpr, repeats: int = 0) -> int:
    """custom_vjp calls inside layer scans, each counted once per scan iteration. (Flax's nn.scan also
    traces its body once outside the scan, for shapes; that copy is dead code, never run.)"""
    count = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name.startswith("custom_vjp_call"):
            count += repeats
            continue
        inner = max(repeats, 1) * eqn.params["length"] if eqn.primitive.name == "scan" else repeats
        count += sum(attend_runs_per_layer_scan(sub, inner) for sub in jax_core.jaxprs_in_params(eqn.params))
    return count


@pytest.mark.parametrize("family, chunks", [("vanilla", (4,)), ("photon", (2, 2))])
def test_the_xla_path_of_every_family_runs_attend_in_every_layer(family, chunks):
    cfg = tiny_config(family=family, chunks=chunks, model__attention_impl="xla").model
    t = cfg.meta_context * 2
    model = build_model(cfg)
    variables = random_variables(model, t)
    tokens = jnp.zeros((1, t), jnp.int32)
    jaxpr = jax.make_jaxpr(lambda p: model.apply({"params": p}, tokens, jnp.ones((1, t))))(variables["params"])
    assert cfg.scan_layers
    layers = [cfg.num_layers] if family == "vanilla" else (
        [level.encoder_layers for level in cfg.levels] + [level.decoder_layers for level in cfg.levels])
    assert attend_runs_per_layer_scan(jaxpr.jaxpr) == sum(layers)
