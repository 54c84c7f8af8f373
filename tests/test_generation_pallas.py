"""Generation through the Pallas decode kernel (interpret mode on CPU) equals the XLA path."""

import dataclasses

import jax
import numpy as np
import pytest
from conftest import tiny_config

from photon_jax.generation import SamplingConfig, generate
from photon_jax.model import build_model
from photon_jax.sharding import strip_boxes


pytestmark = pytest.mark.usefixtures("fast_compile")


@pytest.mark.parametrize("family,chunks", [("photon", (2, 2)), ("vanilla", (2,))])
def test_pallas_decode_attention_generates_the_same_tokens(family, chunks):
    # head_dim 16: the GPU kernel body (run in interpret mode here) needs a power of two >= 16
    cfg = tiny_config(family=family, chunks=chunks, width=64).model
    assert cfg.head_width == 16
    model = build_model(cfg)
    params = strip_boxes(model.init(jax.random.PRNGKey(3), np.zeros((1, cfg.meta_context * 4), np.int32)))["params"]
    prompts = [[5, 9, 3], [7, 1, 2, 8, 4, 6]]
    runs = {}
    for impl in ("xla", "pallas"):
        impl_cfg = dataclasses.replace(cfg, attention_impl=impl)
        result = generate(impl_cfg, params, prompts, max_new_tokens=7, sampling=SamplingConfig(greedy=True),
                          return_logits=True)
        runs[impl] = result
    assert runs["xla"].tokens == runs["pallas"].tokens
    for a, b in zip(runs["xla"].logits, runs["pallas"].logits):
        for la, lb in zip(a, b):
            np.testing.assert_allclose(la, lb, atol=1e-4, rtol=1e-4)
