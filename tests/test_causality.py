"""Causality of the training forward, by perturbation (docs/method.md 3.3).

For each configuration we build dep[p, i] = "the logits at position i change when
token p is changed" by perturbing every position once through the jitted forward
`model.apply(params, tokens)[0]` in float32, and compare it with

* the universal rule: positions <= p are bit-identical for every p;
* the stated receptive field of each alignment variant (A: exactly t_<i; B: t_<i
  minus the previous level-1 unit; C: own-chunk tokens plus earlier meta-contexts);
* an exact reference receptive field derived independently from the architecture
  description (section 3), which pins down every entry of dep.
"""

from __future__ import annotations

import functools
import math

import jax
import numpy as np
import pytest
from conftest import random_variables, tiny_config

from photon_jax.model import build_model

CHUNKS = [(4,), (4, 4), (2, 3), (2, 2, 2)]
VARIANTS = ["A", "B", "C"]
SEQ_MULT = 3  # meta-contexts per sequence
FAST_COMPILE = {"xla_backend_optimization_level": 0}


# ----------------------------------------------------------------------------- reference receptive fields

def reference_dep(chunks, seq_len, variant, block_local=False):
    """dep[p, i] derived from docs/method.md section 3, independently of the model code.

    Level l unit q covers tokens [q*S_l, (q+1)*S_l) with S_l = C_1*...*C_l.
    X^(l)_q (encoder, causal over units) sees tokens < (q+1)*S_l (from the start of its
    meta-context when the lower encoders are block-local).  The decoder window of a level-l
    unit q sees its conditioning plus the content of the children before the slot.
    """
    n = len(chunks)
    sizes = [math.prod(chunks[:k]) for k in range(n + 1)]
    meta = sizes[n]
    empty = frozenset()

    @functools.lru_cache(maxsize=None)
    def enc(level, q):
        if q < 0:
            return empty
        hi = (q + 1) * sizes[level]
        lo = (q * sizes[level] // meta) * meta if (block_local and level < n) else 0
        return frozenset(range(lo, hi))

    @functools.lru_cache(maxsize=None)
    def cond(level, q):
        """What conditions the decoder window of level-`level` unit q."""
        if level == n:
            return enc(n, q - 1)
        if variant == "A":
            return xhat(level, q)
        return xhat(level, q - 1) if q > 0 else empty

    @functools.lru_cache(maxsize=None)
    def content(level, s):
        """Receptive field of the content input for child s of level `level` (beyond the conditioning)."""
        if level == 0:
            return frozenset([s])
        if variant == "C":
            return empty  # the decoder's own outputs: nothing beyond the window's conditioning
        return enc(level, s)

    @functools.lru_cache(maxsize=None)
    def xhat(level, w):
        """Receptive field of the decoder output Xhat^(level)_w."""
        c = chunks[level]
        q = w // c
        field = set(cond(level + 1, q))
        for s in range(q * c, w):
            field |= content(level, s)
        return frozenset(field)

    dep = np.zeros((seq_len, seq_len), bool)
    for i in range(seq_len):
        for p in xhat(0, i):
            dep[p, i] = True
    return dep


def test_reference_matches_the_stated_fields():
    """Sanity check of the reference itself on the table of docs/method.md 3.3."""
    t = 48
    a = reference_dep((4, 4), t, "A")
    assert np.array_equal(a, np.triu(np.ones((t, t), bool), k=1))
    b = reference_dep((4, 4), t, "B")
    for i in range(t):
        u = i // 4
        blind = set(range(4 * (u - 1), 4 * u)) if u else set()
        assert {p for p in range(t) if b[p, i]} == set(range(i)) - blind


# ----------------------------------------------------------------------------- measured dependencies

def _cfg(chunks, variant, block_local=False, family="photon"):
    return tiny_config(family=family, chunks=chunks, alignment=variant or "A", seq_mult=SEQ_MULT,
                       model__block_local_lower=block_local)


@functools.lru_cache(maxsize=None)
def _params(chunks, family="photon"):
    """Params for one chunk layout (A/B/C and block_local_lower share the parameter structure)."""
    cfg = _cfg(chunks, "A", family=family)
    return random_variables(build_model(cfg.model), cfg.data.seq_len)


@functools.lru_cache(maxsize=None)
def _forward(chunks, variant, block_local=False, family="photon"):
    model = build_model(_cfg(chunks, variant, block_local, family).model)
    # Compiled with LLVM optimisation off: the same computation, about half the compile time.
    return jax.jit(lambda p, x: model.apply(p, x)[0], compiler_options=FAST_COMPILE)


def _tokens(cfg, batch=1, seed=1):
    return np.random.default_rng(seed).integers(0, cfg.model.vocab_size, (batch, cfg.data.seq_len)).astype(np.int32)


@functools.lru_cache(maxsize=None)
def measured_dep(chunks, variant, block_local=False, family="photon"):
    """(dep, base_logits): dep[p, i] from one perturbation of every position p."""
    cfg = _cfg(chunks, variant, block_local, family)
    seq_len, vocab = cfg.data.seq_len, cfg.model.vocab_size
    params = _params(chunks, family)
    forward = _forward(chunks, variant, block_local, family)
    base_tokens = _tokens(cfg)
    base = np.asarray(forward(params, base_tokens))
    assert base.shape == (1, seq_len, vocab) and base.dtype == np.float32
    assert np.all(np.isfinite(base))
    rng = np.random.default_rng(2)
    dep = np.zeros((seq_len, seq_len), bool)
    for p in range(seq_len):
        tokens = base_tokens.copy()
        tokens[0, p] = (tokens[0, p] + rng.integers(1, vocab)) % vocab
        out = np.asarray(forward(params, tokens))
        dep[p] = np.any(out[0] != base[0], axis=-1)
    return dep, base


def _dep(chunks, variant, block_local=False):
    return measured_dep(chunks, variant, block_local)[0]


def _seen(dep, i):
    return {p for p in range(dep.shape[0]) if dep[p, i]}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("chunks", CHUNKS, ids=lambda c: "x".join(map(str, c)))
def test_no_position_sees_itself_or_the_future(chunks, variant):
    dep = _dep(chunks, variant)
    t = dep.shape[0]
    for p in range(t):
        assert not dep[p, : p + 1].any(), (
            f"variant {variant} chunks {chunks}: changing token {p} changed logits at positions "
            f"{np.nonzero(dep[p, :p + 1])[0].tolist()} (<= {p})")
    # and information flows at all: the first token influences later positions
    assert dep[0].any()


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("chunks", CHUNKS, ids=lambda c: "x".join(map(str, c)))
def test_dependencies_match_reference(chunks, variant):
    dep = _dep(chunks, variant)
    ref = reference_dep(chunks, dep.shape[0], variant)
    diff = np.argwhere(dep != ref)
    assert diff.size == 0, (
        f"variant {variant} chunks {chunks}: {len(diff)} (p, i) pairs differ from the reference, e.g. "
        + ", ".join(f"(p={p}, i={i}: measured {dep[p, i]}, expected {ref[p, i]})" for p, i in diff[:5]))


@pytest.mark.parametrize("chunks", CHUNKS, ids=lambda c: "x".join(map(str, c)))
def test_variant_a_sees_exactly_the_left_context(chunks):
    dep = _dep(chunks, "A")
    t = dep.shape[0]
    for i in range(t):
        assert _seen(dep, i) == set(range(i)), f"position {i} sees {sorted(_seen(dep, i))}"


@pytest.mark.parametrize("chunks", [(4, 4), (2, 3)], ids=lambda c: "x".join(map(str, c)))
def test_variant_b_two_levels_blind_to_previous_unit(chunks):
    dep = _dep(chunks, "B")
    c1 = chunks[0]
    t = dep.shape[0]
    for i in range(t):
        u = i // c1
        blind = set(range(c1 * (u - 1), c1 * u)) if u > 0 else set()
        seen = _seen(dep, i)
        assert not (seen & blind), f"position {i} (unit {u}) sees {sorted(seen & blind)} of unit {u - 1}"
        assert seen == set(range(i)) - blind, f"position {i}: sees {sorted(seen)}"


def test_variant_b_three_levels_blind_to_previous_unit():
    dep = _dep((2, 2, 2), "B")
    for i in range(dep.shape[0]):
        u = i // 2
        seen = _seen(dep, i)
        assert set(range(2 * u, i)) <= seen  # own unit, earlier tokens
        if u > 0:
            assert not (seen & set(range(2 * (u - 1), 2 * u)))


def test_variant_b_one_level_equals_a():
    """With L = 1 there is no lower level to shift: B is A, dependency and logits alike."""
    dep_a, logits_a = measured_dep((4,), "A")
    dep_b, logits_b = measured_dep((4,), "B")
    assert np.array_equal(dep_a, dep_b)
    assert np.array_equal(logits_a, logits_b)


@pytest.mark.parametrize("chunks", [(4, 4), (2, 3)], ids=lambda c: "x".join(map(str, c)))
def test_variant_c_two_levels(chunks):
    dep = _dep(chunks, "C")
    c1 = chunks[0]
    meta = math.prod(chunks)
    t = dep.shape[0]
    earlier_meta_seen = False
    for i in range(t):
        u, g = i // c1, i // meta
        seen = _seen(dep, i)
        own_chunk = set(range(c1 * u, i))
        own_meta_other = set(range(g * meta, (g + 1) * meta)) - own_chunk
        assert own_chunk <= seen, f"position {i} misses earlier tokens of its own chunk"
        assert not (seen & own_meta_other), (
            f"position {i} sees {sorted(seen & own_meta_other)} of its own meta-context outside its chunk")
        earlier_meta_seen |= bool(seen & set(range(g * meta)))
        if g >= 2:  # by the third meta-context every token sees something older
            assert seen & set(range(g * meta)), f"position {i} sees no earlier meta-context"
    assert earlier_meta_seen


@pytest.mark.parametrize("chunks", [(4, 4), (2, 2, 2)], ids=lambda c: "x".join(map(str, c)))
def test_block_local_lower_keeps_strict_causality(chunks):
    dep = measured_dep(chunks, "A", block_local=True)[0]
    t = dep.shape[0]
    assert np.array_equal(dep, np.triu(np.ones((t, t), bool), k=1))
    assert np.array_equal(dep, reference_dep(chunks, t, "A", block_local=True))


def test_block_local_lower_changes_the_model():
    """The flag must actually restrict the lower encoders: same params and tokens, different logits."""
    plain = measured_dep((4, 4), "A")[1]
    local = measured_dep((4, 4), "A", block_local=True)[1]
    meta = 16
    # the first meta-context (and the first unit of the next one) is the same either way ...
    np.testing.assert_allclose(plain[:, :meta + 4], local[:, :meta + 4], rtol=0, atol=1e-5)
    # ... later ones differ, since level-1 states no longer see the previous meta-context
    assert not np.allclose(plain[:, 2 * meta:], local[:, 2 * meta:])


def test_vanilla_is_strictly_causal_including_itself():
    """Vanilla logits[:, i] predict t_{i+1}: they see t_<=i, so dep[p, i] iff i >= p."""
    dep = measured_dep((4,), None, family="vanilla")[0]
    t = dep.shape[0]
    assert np.array_equal(dep, np.triu(np.ones((t, t), bool), k=0))


@pytest.mark.parametrize("family,alignment", [("photon", "A"), ("photon", "C"), ("vanilla", "A")])
def test_batch_rows_do_not_mix(family, alignment):
    chunks = (4, 4)
    cfg = _cfg(chunks, alignment, family=family)
    t, vocab = cfg.data.seq_len, cfg.model.vocab_size
    params = _params(chunks, family)
    forward = _forward(chunks, alignment, False, family)
    rng = np.random.default_rng(0)
    batch = _tokens(cfg, batch=2, seed=3)
    out = np.asarray(forward(params, batch))
    assert not np.allclose(out[0], out[1])
    # changing every token of row 1 leaves row 0 bit-identical, and does change row 1
    other = batch.copy()
    other[1] = (other[1] + rng.integers(1, vocab, t)) % vocab
    out2 = np.asarray(forward(params, other))
    np.testing.assert_array_equal(out[0], out2[0])
    assert not np.allclose(out[1], out2[1])
    # each row alone gives the same logits as inside the batch
    for r in range(2):
        alone = np.asarray(forward(params, batch[r:r + 1]))
        np.testing.assert_allclose(alone[0], out[r], rtol=1e-5, atol=1e-5)
    # and swapping the rows swaps the outputs
    swapped = np.asarray(forward(params, batch[::-1]))
    np.testing.assert_allclose(swapped[::-1], out, rtol=1e-5, atol=1e-5)
