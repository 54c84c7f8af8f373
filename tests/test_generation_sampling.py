"""Sampling, stopping, compile reuse and bad input of the generation API."""

from __future__ import annotations

import numpy as np
import pytest
from test_generation import GREEDY, tiny_model

from photon_jax.errors import UserError
from photon_jax.generation import SamplingConfig, generate, generate_stream
from photon_jax.generation.sampling import filter_logits

pytestmark = pytest.mark.usefixtures("fast_compile")

PROMPTS = [[3, 1, 4, 1, 5], [9, 2, 6, 5, 3, 5, 8, 9, 7]]
NEW = 10


@pytest.fixture(scope="module")
def photon():
    return tiny_model("photon", (2, 3), "A", False, True)


def _gen(model, **kw):
    cfg, _, params = model
    kw.setdefault("max_new_tokens", NEW)
    return generate(cfg, params, kw.pop("prompts", PROMPTS), return_logits=True, **kw)


def test_seeded_sampling_is_reproducible(photon):
    s = SamplingConfig(temperature=1.0)
    a, b = _gen(photon, sampling=s, seed=11), _gen(photon, sampling=s, seed=11)
    c = _gen(photon, sampling=s, seed=12)
    assert a.tokens == b.tokens
    assert a.tokens != c.tokens
    assert b.timings["compiled"] is False  # one compiled program per (batch, capacity)


def test_greedy_limits_of_sampling(photon):
    greedy = _gen(photon, sampling=GREEDY)
    assert _gen(photon, sampling=SamplingConfig(temperature=0.0)).tokens == greedy.tokens
    assert _gen(photon, sampling=SamplingConfig(top_k=1), seed=5).tokens == greedy.tokens
    assert _gen(photon, sampling=SamplingConfig(top_p=1e-6), seed=5).tokens == greedy.tokens
    assert _gen(photon, sampling=SamplingConfig(temperature=1e-4), seed=5).tokens == greedy.tokens


def test_top_k_and_top_p_keep_only_the_allowed_tokens(photon):
    result = _gen(photon, sampling=SamplingConfig(top_k=3, temperature=2.0), seed=3)
    for toks, logits in zip(result.tokens, result.logits):
        top3 = np.argsort(-logits[0], axis=-1)[:, :3]
        assert all(t in row for t, row in zip(toks[0], top3))
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], np.float32))
    kept = np.isfinite(np.asarray(filter_logits(logits, 1.0, 0, 0.7)))
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 + 0.3 >= 0.7: smallest such prefix
    kept = np.isfinite(np.asarray(filter_logits(logits, 1.0, 3, 0.99)))
    assert kept.tolist() == [[True, True, True, False]]


def test_eos_stops_only_its_row(photon):
    free = _gen(photon, sampling=GREEDY)
    eos = free.tokens[0][0][3]  # row 0 stops at (the first occurrence of) its 4th token
    stopped = _gen(photon, sampling=GREEDY, eos_id=eos)
    for toks, reasons, ref in zip(stopped.tokens, stopped.finish_reasons, free.tokens):
        ref = ref[0]
        cut = ref.index(eos) + 1 if eos in ref else len(ref)
        assert toks[0] == ref[:cut]
        assert reasons[0] == ("eos" if eos in ref else "length")
    assert stopped.finish_reasons[0] == ["eos"] and len(stopped.tokens[0][0]) <= 4
    assert any(len(t[0]) == NEW for t in stopped.tokens)  # another row went on


def test_streaming_yields_the_same_tokens_in_chunks(photon):
    cfg, _, params = photon
    whole = _gen(photon, sampling=GREEDY, eos_id=7)
    chunks = list(generate_stream(cfg, params, PROMPTS, max_new_tokens=NEW, sampling=GREEDY, eos_id=7,
                                  chunk_steps=3))
    assert 1 < len(chunks) <= -(-NEW // 3)
    joined = [[sum((c[p][0] for c in chunks), [])] for p in range(len(PROMPTS))]
    assert joined == whole.tokens


def test_max_context_stops_rows_at_the_context_limit():
    cfg, _, params = tiny_model("vanilla", (4,), "A", False, False)
    out = generate(cfg, params, PROMPTS, max_new_tokens=6, sampling=GREEDY, max_context=12)
    assert [len(t[0]) for t in out.tokens] == [6, 3]
    assert out.finish_reasons == [["length"], ["context"]]


def test_bad_input_is_one_line_user_error(photon):
    cfg, _, params = photon
    vanilla = tiny_model("vanilla", (4,), "A", False, False)[0]
    cases = [
        (dict(prompts=[[1, 2], []]), "prompt 1 is empty"),
        (dict(prompts=[]), "no prompts"),
        (dict(prompts=[[1, cfg.vocab_size]]), "outside the vocabulary"),
        (dict(prompts=[[1, -1]]), "outside the vocabulary"),
        (dict(prompts=[[1.5, 2]]), "integer token ids"),
        (dict(max_new_tokens=0), "max_new_tokens must be a positive integer"),
        (dict(max_new_tokens=-3), "max_new_tokens must be a positive integer"),
        (dict(max_context=4), "more than the maximum context 4"),
        (dict(mode="vanilla"), "mode 'vanilla' is for vanilla models"),
        (dict(mode="exact-local"), "needs a model trained with model.block_local_lower=true"),
        (dict(mode="beam"), "unknown generation mode"),
        (dict(num_samples=0), "num_samples must be >= 1"),
        (dict(eos_id=cfg.vocab_size), "eos_id"),
        (dict(sampling=SamplingConfig(top_p=0.0)), "top_p"),
        (dict(sampling=SamplingConfig(temperature=-1.0)), "temperature"),
    ]
    for kw, message in cases:
        kw.setdefault("prompts", PROMPTS)
        kw.setdefault("max_new_tokens", 4)
        with pytest.raises(UserError, match=message) as err:
            generate(cfg, params, **kw)
        assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="needs a PHOTON model"):
        generate(vanilla, None, PROMPTS, mode="recgen", max_new_tokens=4)
    one_level = tiny_model("photon", (4,), "A", True, False)[0]
    with pytest.raises(UserError, match="at least two levels"):
        generate(one_level, None, PROMPTS, mode="exact-local", max_new_tokens=4)
