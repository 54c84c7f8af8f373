"""Causal self-attention through the fused path (jax.nn.dot_product_attention; cuDNN flash attention on
GPU) equals the einsum reference with its dense mask, for every family and mask: causal, grouped-query,
block-local encoders, local decoder windows; forward and gradients. On CPU `attention_impl=pallas`
selects the fused path (its XLA implementation), `xla` the reference. The TPU fused path (splash
attention, a Pallas kernel) runs here in interpret mode: the kernel against the reference, and whole
models with the platform switch pointed at TPU, the kernel launches counted in the traced program."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_variables, tiny_config
from jax.extend import core as jax_core

from pallas_kernels.flash_attention_tpu import SPLASH_KERNEL_PREFIX, causal_attention_tpu, splash_takes
from photon_jax.model import attention as attention_module
from photon_jax.model import build_model
from photon_jax.model.attention import (
    FUSED_SCOPE,
    CausalMask,
    fused_causal_attention,
    reference_attention,
    resolve_mask,
)
from photon_jax.model.losses import loss_fn

pytestmark = pytest.mark.usefixtures("fast_compile")

CASES = {  # name: (family, chunks, alignment, block_local); every mask kind and alignment rule once
    "vanilla": ("vanilla", (4,), "A", False),
    "L2-B": ("photon", (2, 2), "B", False),
    "L2-C": ("photon", (2, 2), "C", False),
    "L3-A-blocklocal": ("photon", (2, 2, 2), "A", True),
}


def fused_ops(jaxpr) -> int:
    """Operations traced inside the fused attention's scope, in a program and all its sub-programs."""
    count = 0
    for eqn in jaxpr.eqns:
        count += FUSED_SCOPE in str(eqn.source_info.name_stack)
        count += sum(fused_ops(sub) for sub in jax_core.jaxprs_in_params(eqn.params))
    return count


def model_inputs(cfg, t: int, batch: int, seed: int):
    """Random parameters of cfg's model, (batch, t) random tokens and an all-ones mask."""
    variables = random_variables(build_model(cfg), t)
    tokens = jnp.asarray(np.random.default_rng(seed).integers(0, cfg.vocab_size, (batch, t)), jnp.int32)
    return variables, tokens, jnp.ones((batch, t), jnp.float32)


def model_loss(cfg, impl, tokens, mask):
    """params -> (training loss, logits) of cfg's model with model.attention_impl = impl."""
    impl_cfg = dataclasses.replace(cfg, attention_impl=impl)
    model = build_model(impl_cfg)

    def loss(params):
        logits, aux = model.apply({"params": params}, tokens, mask)
        return loss_fn(impl_cfg, logits, aux, tokens, mask)[0], logits

    return loss


def splash_launches(jaxpr) -> int:
    """splash attention pallas_calls (forward, dq, dkv) in a program and all its sub-programs."""
    count = 0
    for eqn in jaxpr.eqns:
        name = str(eqn.params.get("name", "")) if eqn.primitive.name == "pallas_call" else ""
        count += name.startswith(SPLASH_KERNEL_PREFIX)
        count += sum(splash_launches(sub) for sub in jax_core.jaxprs_in_params(eqn.params))
    return count


@pytest.mark.parametrize("block", [0, 4])
@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_fused_causal_attention_equals_the_dense_reference(block, dtype, tol):
    rng = np.random.default_rng(block)
    q, k, v = (jnp.asarray(rng.standard_normal(shape), dtype) for shape in ((2, 16, 8, 52), (2, 16, 2, 52),
                                                                           (2, 16, 2, 52)))
    fused = fused_causal_attention(q, k, v, block)
    reference = reference_attention(q, k, v, CausalMask(block).dense(16))
    np.testing.assert_allclose(np.asarray(fused, np.float32), np.asarray(reference, np.float32), atol=tol, rtol=tol)


def test_the_stack_builds_a_dense_mask_only_for_the_reference_path():
    assert resolve_mask(CausalMask(2), 8, "pallas") == CausalMask(2)
    dense = resolve_mask(CausalMask(2), 8, "xla")
    assert dense.shape == (1, 8, 8) and bool(dense[0, 3, 2]) and not bool(dense[0, 3, 1])
    explicit = jnp.ones((1, 8, 8), bool)
    assert resolve_mask(explicit, 8, "pallas") is explicit


@pytest.mark.parametrize("name", list(CASES))
def test_every_family_trains_the_same_through_the_fused_path(name):
    family, chunks, alignment, block_local = CASES[name]
    cfg = tiny_config(family=family, chunks=chunks, alignment=alignment,
                      model__block_local_lower=str(block_local).lower()).model
    t = cfg.meta_context * 4
    variables, tokens, mask = model_inputs(cfg, t, 2, 1)

    def loss_and_grads(impl):
        loss = model_loss(cfg, impl, tokens, mask)
        (value, logits), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
        return value, logits, grads, fused_ops(jax.make_jaxpr(loss)(variables["params"]).jaxpr)

    ref_loss, ref_logits, ref_grads, ref_fused = loss_and_grads("xla")
    loss, logits, grads, fused = loss_and_grads("pallas")
    assert ref_fused == 0 and fused > 0  # the reference never runs the fused path; pallas does
    np.testing.assert_allclose(logits, ref_logits, atol=2e-5, rtol=2e-5)
    np.testing.assert_allclose(loss, ref_loss, atol=1e-6, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=2e-4)


@pytest.mark.parametrize("t, heads, kv_heads, head_dim, block, dtype, tol", [
    (256, 4, 2, 52, 0, jnp.float32, 2e-5),     # two 128 tiles, grouped-query, head dim padded to 128
    (256, 2, 2, 32, 64, jnp.float32, 2e-5),    # block-local: causal inside blocks of 64 (chunked-causal mask)
    (128, 4, 4, 64, 0, jnp.bfloat16, 3e-2),
])
def test_splash_attention_kernel_equals_the_dense_reference_forward_and_backward(t, heads, kv_heads, head_dim,
                                                                                 block, dtype, tol):
    rng = np.random.default_rng(t + block)
    q, k, v = (jnp.asarray(rng.standard_normal((2, t, n, head_dim)), dtype) for n in (heads, kv_heads, kv_heads))
    mask = CausalMask(block).dense(t)

    def loss(fn):
        return lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v).astype(jnp.float32)))

    kernel = lambda q, k, v: causal_attention_tpu(q, k, v, block, interpret=True)  # noqa: E731
    reference = lambda q, k, v: reference_attention(q, k, v, mask)  # noqa: E731
    np.testing.assert_allclose(np.asarray(kernel(q, k, v), np.float32), np.asarray(reference(q, k, v), np.float32),
                               atol=tol, rtol=tol)
    grads = jax.grad(loss(kernel), argnums=(0, 1, 2))(q, k, v)
    ref_grads = jax.grad(loss(reference), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(grads, ref_grads):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=5 * tol, rtol=5 * tol)
    # forward, dq and dkv are kernels: the gradient program launches three
    assert splash_launches(jax.make_jaxpr(jax.grad(loss(kernel)))(q, k, v).jaxpr) == 3
    assert not splash_takes(96) and not splash_takes(256, 96) and splash_takes(384, 64)


@pytest.mark.parametrize("family, chunks, block_local", [("vanilla", (4,), False), ("photon", (2, 2), True)])
def test_models_train_the_same_through_the_tpu_splash_kernel(monkeypatch, family, chunks, block_local):
    """Sequences long enough for the kernel (vanilla T = 128; PHOTON T = 512: level streams of 256 and 128
    tokens, block-local lower encoder; its short decoder windows stay on the XLA fused path)."""
    cfg = tiny_config(family=family, chunks=chunks, seq_mult=128 // (chunks[0] if family == "vanilla" else 1),
                      model__block_local_lower=str(block_local).lower()).model
    t = 128 if family == "vanilla" else 512
    variables, tokens, mask = model_inputs(cfg, t, 1, 2)

    def loss_and_grads(impl):
        loss = model_loss(cfg, impl, tokens, mask)
        (value, _), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
        program = jax.make_jaxpr(jax.grad(lambda p: loss(p)[0]))(variables["params"]).jaxpr
        return value, grads, splash_launches(program)

    ref_loss, ref_grads, ref_launches = loss_and_grads("xla")
    monkeypatch.setattr(attention_module, "flash_platform", lambda: "tpu")
    loss, grads, launches = loss_and_grads("pallas")
    assert ref_launches == 0 and launches >= 3  # fwd + dq + dkv of at least one stack
    np.testing.assert_allclose(loss, ref_loss, atol=1e-5, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(a, b, atol=5e-5, rtol=5e-4)


@pytest.mark.parametrize("family, chunks, block_local, mode", [("vanilla", (2,), False, None),
                                                               ("photon", (2, 2), True, "hiergen")])
def test_prefill_into_an_empty_cache_runs_fused_and_fills_the_same_cache(family, chunks, block_local, mode):
    """Prefill hands the stacks a CausalMask with an empty cache: the fused path attends over the prompt's
    own keys and writes the cache; the reference path reads the whole cache under the dense mask."""
    from photon_jax.generation.engine import make_runner

    cfg = tiny_config(family=family, chunks=chunks, model__block_local_lower=str(block_local).lower()).model
    t = cfg.meta_context * 2
    params = random_variables(build_model(cfg), t)["params"]
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, cfg.vocab_size, (2, t)), jnp.int32)
    prompt_len = jnp.asarray([t, t - 3], jnp.int32)

    def prefill(impl):
        runner = make_runner(dataclasses.replace(cfg, attention_impl=impl), mode or "vanilla")
        run = lambda p: runner.prefill(p, tokens, prompt_len, 2 * t)  # noqa: E731
        return run(params), fused_ops(jax.make_jaxpr(run)(params).jaxpr)

    (ref_state, ref_logits), ref_fused = prefill("xla")
    (state, logits), fused = prefill("pallas")
    assert ref_fused == 0 and fused > 0
    np.testing.assert_allclose(logits, ref_logits, atol=2e-5, rtol=2e-5)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(ref_state)):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=2e-5)


def test_splash_kernel_runs_per_shard_under_a_multi_device_mesh(monkeypatch):
    """On a (data 2, fsdp 2, tensor 2) mesh the kernel (which XLA cannot partition) runs inside shard_map on
    each device's rows and heads; loss and gradients equal the single-device reference."""
    import flax.linen as nn

    from photon_jax.config import MeshConfig
    from photon_jax.sharding import logical_rules, make_mesh

    cfg = tiny_config(family="vanilla", chunks=(4,), seq_mult=32).model  # T = 128, 4 heads, 2 kv heads
    variables, tokens, mask = model_inputs(cfg, 128, 4, 4)

    def loss_of(impl):
        loss = model_loss(cfg, impl, tokens, mask)
        return lambda p: loss(p)[0]

    ref_loss, ref_grads = jax.value_and_grad(loss_of("xla"))(variables["params"])
    monkeypatch.setattr(attention_module, "flash_platform", lambda: "tpu")
    mesh_cfg = MeshConfig(data=2, fsdp=2, tensor=2)
    with jax.set_mesh(make_mesh(mesh_cfg)), nn.logical_axis_rules(logical_rules(mesh_cfg)):
        step = jax.jit(jax.value_and_grad(loss_of("pallas")))
        jaxpr = jax.make_jaxpr(step)(variables["params"]).jaxpr
        loss, grads = step(variables["params"])
    assert splash_launches(jaxpr) >= 3
    # each device holds its own rows (data x fsdp) and its heads with their kv heads (tensor)
    assert "P(('data', 'fsdp'), None, 'tensor', None)" in str(jaxpr)
    np.testing.assert_allclose(loss, ref_loss, atol=1e-5, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(a, b, atol=5e-5, rtol=5e-4)
