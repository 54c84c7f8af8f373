"""Cached generation equals the teacher-forced forward (docs/method.md 5.2, Levanter's rule).

Greedy hiergen must produce argmax(model.apply(params, sequence)[0]) at every generated
position of its own output, with the same logits (fp32, 1e-4), for ragged batches of
unaligned prompts (lengths 1, B, B+1, > 2B), L = 1, 2, 3, uneven chunks, alignments A, B, C,
exact-local on a block-local model, and the vanilla model (logits[:, i] -> i+1). hiergen
of a block-local model is checked against exact-local in test_generation_modes.py.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from photon_jax.generation import SamplingConfig, generate
from photon_jax.generation.api import plan, run_rows
from photon_jax.model import build_model
from photon_jax.sharding import strip_boxes

GREEDY = SamplingConfig(greedy=True)


pytestmark = pytest.mark.usefixtures("fast_compile")


@functools.lru_cache(maxsize=None)
def tiny_model(family="photon", chunks=(2, 3), alignment="A", block_local=False, scan=False):
    extra = {"model__scan_layers": str(scan).lower(), "model__block_local_lower": str(block_local).lower()}
    cfg = tiny_config(family=family, chunks=chunks, alignment=alignment, **extra).model
    model = build_model(cfg)
    return cfg, model, random_params(model, cfg)


def random_params(model, cfg, seed=1):
    """Random weights without compiling model.init (only its shapes are traced). Biases and norm
    scales are randomised too, so every parameter matters."""
    shapes = strip_boxes(jax.eval_shape(model.init, jax.random.PRNGKey(0),
                                        jnp.zeros((1, cfg.meta_context), jnp.int32)))["params"]
    rng = np.random.default_rng(seed)

    def fill(path, s):
        name = path[-1].key
        noise = rng.standard_normal(s.shape).astype(np.float32)
        if name == "scale":
            return 1.0 + 0.1 * noise
        if name == "bias" or name.startswith("start_"):
            return 0.1 * noise
        if name == "embedding":
            return noise
        return noise / np.sqrt(np.prod(s.shape[:-1]))

    return {"params": jax.tree_util.tree_map_with_path(lambda p, s: jnp.asarray(fill(p, s)), shapes)}


def ragged_prompts(cfg, seed=0):
    b = cfg.meta_context
    rng = np.random.default_rng(seed)
    return [list(map(int, rng.integers(0, cfg.vocab_size, n))) for n in (1, b, b + 1, 2 * b + 3)]


def forward_logits(model, params, sequences, length):
    """Teacher-forced logits of every sequence, right-padded to a common length."""
    arr = np.zeros((len(sequences), length), np.int32)
    for r, s in enumerate(sequences):
        arr[r, : len(s)] = s
    return np.asarray(jax.jit(model.apply)(params, jnp.asarray(arr))[0])


def assert_matches_forward(cfg, model, params, result):
    b = cfg.meta_context
    seqs = [s[0] for s in result.sequences]
    length = -(-max(len(s) for s in seqs) // b) * b
    fwd = forward_logits(model, params, seqs, length)
    shift = 1 if cfg.family == "vanilla" else 0  # vanilla logits[i] predict token i + 1
    for r, (prompt, toks, logits) in enumerate(zip(result.prompts, result.tokens, result.logits)):
        p, n = len(prompt), len(toks[0])
        assert n > 0
        ref = fwd[r, p - shift: p + n - shift]
        np.testing.assert_allclose(logits[0], ref, atol=1e-4, rtol=0)
        assert toks[0] == [int(x) for x in ref.argmax(-1)], f"row {r}"


CASES = [
    # family, chunks, alignment, block_local, scan, mode
    ("photon", (4,), "A", False, False, "hiergen"),  # L = 1 (Block Transformer)
    ("photon", (2, 3), "A", False, True, "hiergen"),  # uneven chunks, scanned layers
    ("photon", (2, 2, 2), "A", False, False, "hiergen"),  # L = 3
    ("photon", (2, 2, 2), "B", False, False, "hiergen"),
    ("photon", (2, 2, 2), "C", False, False, "hiergen"),
    ("photon", (2, 2, 2), "A", True, False, "exact-local"),
    ("vanilla", (4,), "A", False, False, "vanilla"),
]


@pytest.mark.parametrize("family,chunks,alignment,block_local,scan,mode", CASES,
                         ids=[f"{c[0]}-{'x'.join(map(str, c[1]))}-{c[2]}-{c[5]}" for c in CASES])
def test_greedy_generation_equals_teacher_forced_forward(family, chunks, alignment, block_local, scan, mode):
    cfg, model, params = tiny_model(family, chunks, alignment, block_local, scan)
    prompts = ragged_prompts(cfg)
    new = 2 * cfg.meta_context + 3  # crosses unit and meta-context boundaries in every row
    result = generate(cfg, params, prompts, mode=mode, max_new_tokens=new, sampling=GREEDY, return_logits=True)
    assert result.finish_reasons == [["length"]] * len(prompts)
    assert [len(t[0]) for t in result.tokens] == [new] * len(prompts)
    assert_matches_forward(cfg, model, params, result)


def test_cache_pytrees_have_the_documented_shapes():
    """hiergen: a global cache per level sized by units of the capacity; local windows R+C-1."""
    cfg, _, params = tiny_model("photon", (2, 2, 2), "A", False, False)
    mode, prompts, _ = plan(cfg, "hiergen", ragged_prompts(cfg), 2 * cfg.meta_context + 3, GREEDY, None, 1, None)
    out, _, _ = run_rows(cfg, params, mode, prompts, 2 * cfg.meta_context + 3, GREEDY, None, 0, record_logits=True)
    cap = out["tokens"].shape[1]
    assert cap % cfg.meta_context == 0
    for i, cache in enumerate(out["model"]["enc"]):
        assert cache["k"].shape == (1, 4, cap // 2 ** (i + 1), cfg.kv_heads, cfg.head_width)
    for d, cache in enumerate(out["model"]["dec"]):
        assert cache["k"].shape[2] == cfg.levels[d].fanout + cfg.levels[d].chunk - 1
