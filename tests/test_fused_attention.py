"""Causal self-attention through the fused path (jax.nn.dot_product_attention; cuDNN flash attention on
GPU) equals the einsum reference with its dense mask, for every family and mask: causal, grouped-query,
block-local encoders, local decoder windows; forward and gradients. On CPU `attention_impl=pallas`
selects the fused path (its XLA implementation), `xla` the reference."""

import dataclasses

import jax
import jax.numpy as jnp
from jax.extend import core as jax_core
import numpy as np
import pytest
from conftest import random_variables, tiny_config

from photon_jax.model import build_model
from photon_jax.model.attention import FUSED_SCOPE, CausalMask, attend, fused_causal_attention, resolve_mask
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


@pytest.mark.parametrize("block", [0, 4])
@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_fused_causal_attention_equals_the_dense_reference(block, dtype, tol):
    rng = np.random.default_rng(block)
    q, k, v = (jnp.asarray(rng.standard_normal(shape), dtype) for shape in ((2, 16, 8, 52), (2, 16, 2, 52),
                                                                           (2, 16, 2, 52)))
    fused = fused_causal_attention(q, k, v, block)
    reference = attend(q, k, v, CausalMask(block).dense(16))
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
    variables = random_variables(build_model(cfg), t)
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, cfg.vocab_size, (2, t)), jnp.int32)
    mask = jnp.ones((2, t), jnp.float32)

    def loss_and_grads(impl):
        impl_cfg = dataclasses.replace(cfg, attention_impl=impl)
        model = build_model(impl_cfg)

        def loss(params):
            logits, aux = model.apply({"params": params}, tokens, mask)
            return loss_fn(impl_cfg, logits, aux, tokens, mask)[0], logits

        (value, logits), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
        return value, logits, grads, fused_ops(jax.make_jaxpr(loss)(variables["params"]).jaxpr)

    ref_loss, ref_logits, ref_grads, ref_fused = loss_and_grads("xla")
    loss, logits, grads, fused = loss_and_grads("pallas")
    assert ref_fused == 0 and fused > 0  # the reference never runs the fused path; pallas does
    np.testing.assert_allclose(logits, ref_logits, atol=2e-5, rtol=2e-5)
    np.testing.assert_allclose(loss, ref_loss, atol=1e-6, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=2e-4)
