"""vLLM's request dialect: the per-row penalties and min_tokens in the sampler (against NumPy), the request
bounds and refusals of serve/protocol.py, stop strings kept in the text, and ignore_eos / min_tokens /
penalties through the serving engine in-process (random vanilla weights, EOS picked from the greedy
continuation so it is sure to come). Over HTTP on a trained run: tests/test_serve.py.
"""

import threading

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_variables, tiny_config

from photon_jax.generation import generate
from photon_jax.generation.sampling import GREEDY, adjust_logits, penalize_logits
from photon_jax.model import build_model
from photon_jax.serve import protocol
from photon_jax.serve.engine import Request
from photon_jax.serve.launch import ServeOptions, build_engine
from photon_jax.serve.scheduler import Tokens
from photon_jax.serve.text import SampleText

pytestmark = pytest.mark.usefixtures("fast_compile")

PROMPT = [3, 1, 4, 1, 5, 9, 2, 6]
NEW = 12


def _penalized_reference(logits_bv, tokens_bt, length_b, prompt_len_b, rep_b, pres_b, freq_b):
    """vLLM's definitions, one row and one token at a time."""
    out = logits_bv.astype(np.float64).copy()
    for b in range(out.shape[0]):
        seen = set(tokens_bt[b, : length_b[b]].tolist())
        counts = np.bincount(tokens_bt[b, prompt_len_b[b]: length_b[b]], minlength=out.shape[1])
        for v in range(out.shape[1]):
            x = out[b, v]
            if v in seen:
                x = x / rep_b[b] if x > 0 else x * rep_b[b]
            out[b, v] = x - freq_b[b] * counts[v] - pres_b[b] * (counts[v] > 0)
    return out


def test_penalized_logits_equal_a_numpy_reference_for_one_step():
    rng = np.random.default_rng(0)
    b, t, v = 4, 12, 9
    logits = rng.normal(size=(b, v)).astype(np.float32) * 3
    tokens = rng.integers(0, v, (b, t)).astype(np.int32)
    length, prompt_len = np.array([7, 12, 3, 5], np.int32), np.array([2, 4, 3, 5], np.int32)
    rep = np.array([1.5, 0.7, 2.0, 1.0], np.float32)
    pres = np.array([0.5, -1.0, 2.0, 0.0], np.float32)
    freq = np.array([0.3, 1.0, -2.0, 0.0], np.float32)
    got = np.asarray(penalize_logits(jnp.asarray(logits), tokens, length, prompt_len, rep, pres, freq))
    np.testing.assert_allclose(got, _penalized_reference(logits, tokens, length, prompt_len, rep, pres, freq),
                               rtol=1e-6, atol=1e-6)
    assert (got[3] == logits[3]).all()  # neutral values: the row's logits as they were
    # frequency alone on one row: each output token's logit drops by frequency x its count
    counts = np.bincount(tokens[0, 2:7], minlength=v)
    only_freq = penalize_logits(jnp.asarray(logits[:1]), tokens[:1], length[:1], prompt_len[:1], np.ones(1, np.float32),
                                np.zeros(1, np.float32), np.full(1, 0.75, np.float32))
    np.testing.assert_allclose(np.asarray(only_freq)[0], logits[0] - 0.75 * counts, rtol=1e-6)


def _knobs(n, **values):
    out = {"repetition_penalty": np.ones(n, np.float32), "presence_penalty": np.zeros(n, np.float32),
           "frequency_penalty": np.zeros(n, np.float32), "min_tokens": np.zeros(n, np.int32),
           "prompt_len": np.full(n, 2, np.int32)}
    out.update({k: np.asarray(v, out[k].dtype) for k, v in values.items()})
    return out


def test_neutral_knobs_leave_logits_bit_identical_and_min_tokens_masks_only_eos():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 7)).astype(np.float32)
    tokens = rng.integers(0, 7, (3, 6)).astype(np.int32)
    length, active, eos = np.array([4, 4, 4], np.int32), np.ones(3, bool), np.array([3, 3, -1], np.int32)
    same = np.asarray(adjust_logits(jnp.asarray(logits), tokens, length, active, eos, _knobs(3)))
    assert same.tobytes() == logits.tobytes()
    # rows 0 and 2 have 2 output tokens (length 4 - prompt 2), below min_tokens 3; row 2 has no EOS (ignore_eos)
    below = _knobs(3, min_tokens=[3, 2, 3])
    masked = np.asarray(adjust_logits(jnp.asarray(logits), tokens, length, active, eos, below))
    assert masked[0, 3] == -np.inf and np.isfinite(np.delete(masked[0], 3)).all()
    assert masked[1:].tobytes() == logits[1:].tobytes()
    # a penalized row next to neutral ones does not change them
    mixed = np.asarray(adjust_logits(jnp.asarray(logits), tokens, length, active, eos,
                                     _knobs(3, presence_penalty=[0, 2, 0])))
    assert mixed[[0, 2]].tobytes() == logits[[0, 2]].tobytes() and (mixed[1] != logits[1]).any()


def _parse(**fields):
    return protocol.parse({"model": "m", "prompt": "A", **fields})


def test_numbers_are_bounded_at_the_door():
    half = 2**31
    assert _parse(seed=11).seed == 11 and _parse(seed=-5).seed == -5  # seeds that fit keep their tokens
    assert _parse(seed=2**70).seed == 0 and _parse(seed=2**32 + 11).seed == 11  # wrapped to 32 bits
    assert -half <= _parse(seed=10**30 + 7).seed < half
    assert _parse(seed=-1).seed is None  # vLLM: -1 is "no seed"
    assert _parse(max_tokens=10**12).max_tokens == 10**12  # capped per prompt by the server (app._room)
    assert _parse(best_of=3, n=3).n == 3 and _parse(user="someone").model == "m"
    assert _parse(min_p=0, logit_bias={}, suffix="", use_beam_search=False).model == "m"  # neutral values pass


HOSTILE = [
    ({"min_tokens": 10**12}, "min_tokens"),  # above max_tokens (16)
    ({"min_tokens": -1}, "min_tokens"),
    ({"presence_penalty": float("nan")}, "presence_penalty"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"frequency_penalty": float("inf")}, "frequency_penalty"),
    ({"frequency_penalty": -3}, "frequency_penalty"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"repetition_penalty": 1e300}, "repetition_penalty"),
    ({"repetition_penalty": "2"}, "repetition_penalty"),
    ({"timeout": float("inf")}, "timeout"),
    ({"temperature": 10**400}, "temperature"),  # an integer beyond float's range
    ({"top_p": float("nan")}, "top_p"),
    ({"prompt_logprobs": 2**70}, "prompt_logprobs"),
    ({"prompt_logprobs": 1, "stream": True}, "prompt_logprobs"),
    ({"ignore_eos": 1}, "ignore_eos"),
    ({"include_stop_str_in_output": "yes"}, "include_stop_str_in_output"),
    ({"best_of": 2}, "best_of"),
    ({"user": 5}, "user"),
    ({"seed": 1.5}, "seed"),
    *(({field: value}, field) for field, value in [
        ("suffix", "tail"), ("logit_bias", {"5": 10}), ("min_p", 0.1), ("use_beam_search", True),
        ("length_penalty", 0.5), ("allowed_token_ids", [1]), ("bad_words", ["x"]), ("response_format", {})]),
]


@pytest.mark.parametrize("fields,field", HOSTILE, ids=[f"{f}-{i}" for i, (_, f) in enumerate(HOSTILE)])
def test_out_of_range_and_unimplemented_fields_are_refused_by_name(fields, field):
    with pytest.raises(protocol.BadRequest) as err:
        _parse(**fields)
    assert err.value.field == field and "\n" not in str(err.value)


class _Chars:
    """A tokenizer whose token i is the character chr(i)."""

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


def test_stop_string_kept_with_include_and_not_before_min_tokens():
    def run(*args):
        text = SampleText(_Chars(), *args)
        for ch in "abXYcdXYef":
            if text.add([ord(ch)], None, 1):
                break
        return text.release(final=True), text.finish

    assert run(["XY"]) == ("ab", "stop")
    assert run(["XY"], True) == ("abXY", "stop")
    assert run(["XY"], False, 4) == ("abXYcd", "stop")  # the first XY ends within the first 4 tokens
    assert run(["XY"], True, 4) == ("abXYcdXY", "stop")
    assert run(["XY"], False, 10) == ("abXYcdXYef", None)


@pytest.fixture(scope="module")
def greedy_eos():
    """(engine, greedy continuation, index of EOS in it): EOS is a token greedy decoding reaches at `at`."""
    cfg = tiny_config(family="vanilla").model
    params = random_variables(build_model(cfg), 32)["params"]
    ref = generate(cfg, params, [PROMPT], max_new_tokens=NEW, sampling=GREEDY).tokens[0][0]
    at = next(i for i in range(1, NEW) if ref[i] not in ref[:i])
    assert len(set(ref)) < len(ref), ref  # the continuation repeats a token: penalties have work to do
    engine = build_engine(cfg, params, eos_id=ref[at], opts=ServeOptions(mode="vanilla", max_context=24, slots=4))
    yield engine, ref, at
    engine.stop()


def _ask(engine, **knobs):
    done, out = threading.Event(), {"tokens": [], "finish": None}

    def sink(events):
        for e in events:
            if isinstance(e, Tokens):
                out["tokens"] += e.ids
            else:
                out["finish"] = e.reason
                done.set()
    engine.submit(Request(prompt=PROMPT, max_tokens=NEW, sink=sink, **{"temperature": 0.0, **knobs}))
    assert done.wait(120)
    return out["tokens"], out["finish"]


def test_ignore_eos_and_min_tokens_through_the_engine(greedy_eos):
    engine, ref, at = greedy_eos
    assert _ask(engine) == (ref[:at], "stop")
    assert _ask(engine, ignore_eos=True) == (ref, "length")  # EOS is then a token like any other
    tokens, _ = _ask(engine, min_tokens=at + 2)
    assert tokens[:at] == ref[:at] and ref[at] not in tokens[: at + 2] and len(tokens) >= at + 2
    # min_tokens keeps stop_token_ids from ending the sample too: the first token is one, and is kept
    assert _ask(engine, ignore_eos=True, stop_ids=frozenset({ref[0]})) == ([], "stop")
    tokens, _ = _ask(engine, ignore_eos=True, stop_ids=frozenset({ref[0]}), min_tokens=3)
    assert tokens[0] == ref[0] and len(tokens) >= 3


def test_penalties_change_greedy_tokens_and_a_huge_one_bans_repeats(greedy_eos):
    engine, ref, _ = greedy_eos
    for knobs in ({"presence_penalty": 1e4}, {"frequency_penalty": 1e4}):
        tokens, finish = _ask(engine, ignore_eos=True, **knobs)
        assert finish == "length" and len(set(tokens)) == len(tokens) == NEW, (knobs, tokens)
    tokens, _ = _ask(engine, ignore_eos=True, repetition_penalty=2.0)
    assert tokens != ref
    # sampled rows too: the same seed with and without a penalty
    plain, _ = _ask(engine, ignore_eos=True, temperature=1.0, seed=3)
    assert _ask(engine, ignore_eos=True, temperature=1.0, seed=3) == (plain, "length")
    banned, _ = _ask(engine, ignore_eos=True, temperature=1.0, seed=3, presence_penalty=1e4)
    assert len(set(banned)) == NEW
