"""Generation through the Pallas decode kernels (interpret mode on CPU) equals the XLA path, for every
generation case, and the decode program really holds the kernel (its pallas_call sites are counted).

Head dim 52 is the paper's 600M shape (not a power of two: the GPU kernel loads a 64-wide tile and
masks the extra columns); 16 needs no padding. Block-local caches read a window that starts past
slot 0, so they check the [start, end) windows of the kernels.
"""

import dataclasses

import numpy as np
import pytest
from conftest import random_variables, tiny_config

from photon_jax.generation import SamplingConfig, decode_kernel_sites, generate
from photon_jax.model import build_model

pytestmark = pytest.mark.usefixtures("fast_compile")

PROMPTS = [[5, 9, 3], [7, 1, 2, 8, 4, 6, 2, 9, 1]]
GREEDY = SamplingConfig(greedy=True)
CASES = {  # name: (family, chunks, alignment, block_local, mode, num_samples, share_prompt)
    "vanilla": ("vanilla", (2,), "A", False, None, 1, True),
    "block-L1": ("photon", (4,), "A", False, "hiergen", 1, True),
    "L2-A-hiergen": ("photon", (2, 2), "A", False, "hiergen", 1, True),
    "L2-A-recgen": ("photon", (2, 2), "A", False, "recgen", 1, True),
    "L2-B": ("photon", (2, 2), "B", False, "hiergen", 1, True),
    "L2-C": ("photon", (2, 2), "C", False, "hiergen", 1, True),
    "L3-A": ("photon", (2, 2, 2), "A", False, "hiergen", 1, True),
    "L2-blocklocal-hiergen": ("photon", (2, 2), "A", True, "hiergen", 1, True),
    "L2-exact-local": ("photon", (2, 2), "A", True, "exact-local", 1, True),
    "L2-samples-shared": ("photon", (2, 2), "A", False, "hiergen", 3, True),
    "L2-samples-unshared": ("photon", (2, 2), "A", False, "hiergen", 3, False),
    "vanilla-samples-shared": ("vanilla", (2,), "A", False, None, 3, True),
}
HEAD_DIM_16 = ["L2-A-hiergen"]


def expected_sites(cfg, mode, shared: bool) -> int:
    """Single-query cached attentions in one decode step, counted from the config: every layer of the
    token cache (vanilla); every local decoder layer plus every layer of an encoder that keeps a cache in
    this mode (PHOTON). A cache shared by the samples of a prompt is read in two parts (cascade)."""
    if cfg.family == "vanilla":
        return cfg.num_layers * (2 if shared else 1)
    n = len(cfg.levels)
    total = 0
    for i, level in enumerate(cfg.levels):
        assert level.fanout > 1  # a one-row converter window would be one more decode site per level
        total += level.decoder_layers
        top = i == n - 1
        if top or mode == "hiergen" or mode == "exact-local":
            global_cache = top or mode == "hiergen"
            split = shared and global_cache and not (cfg.block_local_lower and not top)
            total += level.encoder_layers * (2 if split else 1)
    return total


def case_model(name, head_dim):
    family, chunks, alignment, block_local, _, _, _ = CASES[name]
    extra = {"model__head_dim": head_dim, "model__block_local_lower": str(block_local).lower()}
    cfg = tiny_config(family=family, chunks=chunks, alignment=alignment, **extra).model
    return cfg, random_variables(build_model(cfg), cfg.meta_context * 4, seed=3)["params"]


@pytest.mark.parametrize("name, head_dim", [(name, 52) for name in CASES] + [(name, 16) for name in HEAD_DIM_16])
def test_pallas_decode_generates_what_xla_does_and_the_kernel_runs(name, head_dim):
    _, _, _, _, mode, samples, share = CASES[name]
    cfg, params = case_model(name, head_dim)
    assert cfg.head_width == head_dim
    runs, sites = {}, {}
    for impl in ("xla", "pallas"):
        impl_cfg = dataclasses.replace(cfg, attention_impl=impl)
        runs[impl] = generate(impl_cfg, params, PROMPTS, mode=mode, max_new_tokens=7, sampling=GREEDY,
                              num_samples=samples, share_prompt=share, return_logits=True)
        sites[impl] = decode_kernel_sites(impl_cfg, params, PROMPTS, mode=mode, max_new_tokens=7,
                                          num_samples=samples, share_prompt=share)
    assert sites["xla"] == 0
    assert sites["pallas"] == expected_sites(cfg, runs["xla"].mode, share and samples > 1), sites
    assert runs["xla"].tokens == runs["pallas"].tokens
    for a, b in zip(runs["xla"].logits, runs["pallas"].logits):
        for la, lb in zip(a, b):
            np.testing.assert_allclose(la, lb, atol=1e-4, rtol=1e-4)
