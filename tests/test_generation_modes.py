"""recgen, exact-local, multi-query sharing, the agreement measurement and the memory report."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_generation import GREEDY, ragged_prompts, tiny_model

from photon_jax.config import load_config
from photon_jax.generation import SamplingConfig, generate
from photon_jax.generation.agreement import agreement
from photon_jax.generation.api import plan, run_rows
from photon_jax.generation.caches import CACHE_AXES, cache_axes, cache_memory_report
from photon_jax.model.losses import token_nll

pytestmark = pytest.mark.usefixtures("fast_compile")


def _run(cfg, params, mode, prompts, new, **kw):
    sampling = kw.pop("sampling", GREEDY)
    mode, prompts, sampling = plan(cfg, mode, prompts, new, sampling, None, kw.get("num_samples", 1), None)
    return run_rows(cfg, params, mode, prompts, new, sampling, None, kw.pop("seed", 0), record_logits=True, **kw)


def _windows(cfg, count=4, length=None, seed=7):
    length = length or 4 * cfg.meta_context
    return np.random.default_rng(seed).integers(0, cfg.vocab_size, (count, length))


# ----------------------------------------------------------------------------- recgen

def test_recgen_keeps_only_the_top_cache_and_matches_hiergen_until_the_first_unit_boundary():
    """What holds exactly (alignment A): prefill is identical, so recgen equals hiergen on every
    token up to the end of the first level-1 unit finished after the prompt (the first C_1
    tokens after a meta-context-aligned prompt). After that, recgen's level-2 decoder is fed
    its own outputs instead of the re-encoded tokens, so the two diverge."""
    cfg, _, params = tiny_model("photon", (2, 3), "A", False, True)
    windows = _windows(cfg)
    prompts = [list(map(int, w[:12])) for w in windows]  # 12 = 2 meta-contexts: aligned
    prompts[1] = prompts[1][:7]  # and one unaligned row (first level-1 unit ends after 1 token)
    hier, _, lens = _run(cfg, params, "hiergen", prompts, 12)
    rec, _, _ = _run(cfg, params, "recgen", prompts, 12)

    enc = rec["model"]["enc"]
    assert enc[0] is None and enc[1] is not None  # no lower-level encoder cache at all
    assert hier["model"]["enc"][0] is not None
    c1 = cfg.levels[0].chunk
    gap = 0.0
    for r, p in enumerate(lens):
        exact_until = (p // c1 + 1) * c1
        np.testing.assert_array_equal(rec["tokens"][r, :exact_until], hier["tokens"][r, :exact_until])
        np.testing.assert_allclose(rec["logits_out"][r, p:exact_until], hier["logits_out"][r, p:exact_until],
                                   atol=1e-5, rtol=0)
        later = slice(exact_until, p + 12)
        gap = max(gap, np.abs(rec["logits_out"][r, later] - hier["logits_out"][r, later]).max())
    assert gap > 1e-3  # after that, really a different computation


def test_recgen_with_one_level_is_hiergen():
    cfg, _, params = tiny_model("photon", (4,), "A", False, False)
    prompts = ragged_prompts(cfg)
    a = generate(cfg, params, prompts, mode="recgen", max_new_tokens=11, sampling=GREEDY, return_logits=True)
    b = generate(cfg, params, prompts, mode="hiergen", max_new_tokens=11, sampling=GREEDY, return_logits=True)
    assert a.tokens == b.tokens
    for x, y in zip(a.logits, b.logits):
        np.testing.assert_allclose(x[0], y[0], atol=1e-5, rtol=0)


def test_agreement_reports_recgen_against_hiergen():
    cfg, _, params = tiny_model("photon", (2, 3), "A", False, True)
    windows = _windows(cfg)
    out = agreement(cfg, params, windows, prompt_len=12)
    rec = out["hiergen_vs_recgen"]
    tf, free = rec["teacher_forced"], rec["free_running"]
    assert out["positions"] == windows.shape[0] * (windows.shape[1] - 12)
    assert 0.0 <= tf["greedy_agreement"] <= 1.0 and tf["kl"] >= 0.0 and tf["nll"] > 0
    assert 0.0 <= free["token_agreement"] <= 1.0
    # the first level-1 chunk after an aligned prompt is exact, the rest is not
    assert free["prefix"] >= cfg.levels[0].chunk
    assert tf["kl"] > 1e-6
    assert "hiergen_vs_exact-local" not in out  # not a block-local model


def _training_nll(cfg, model, params, windows):
    """The training forward's per-target NLL (train/step.py: model.apply, then losses.token_nll): column i
    is the NLL of token i + 1 given tokens 0..i."""
    tokens = jnp.asarray(windows)
    logits, _ = jax.jit(model.apply)(params, tokens)
    return np.asarray(token_nll(cfg, logits, tokens))


def test_agreement_nll_is_the_training_nll_where_recgen_is_exact():
    """The teacher-forced NLLs agreement reports (RecGen's own perplexity on the frontier) against the
    training forward on the same windows. Under A, RecGen is exact up to the end of the first level-1
    unit after a meta-context-aligned prompt: with a continuation of C_1 tokens both NLLs equal the
    training NLL of those tokens; one token more and RecGen's differs (HierGen's still equals it)."""
    cfg, model, params = tiny_model("photon", (2, 3), "A", False, True)
    windows, p, c1 = _windows(cfg), 12, cfg.levels[0].chunk  # 12 = 2 meta-contexts
    nll = _training_nll(cfg, model, params, windows)
    exact = agreement(cfg, params, windows[:, :p + c1], prompt_len=p, free_running=False)
    want = nll[:, p - 1:p - 1 + c1].mean()
    assert exact["nll_hiergen"] == pytest.approx(want, abs=1e-5)
    assert exact["hiergen_vs_recgen"]["teacher_forced"]["nll"] == pytest.approx(want, abs=1e-5)
    beyond = agreement(cfg, params, windows[:, :p + c1 + 1], prompt_len=p, free_running=False)
    want = nll[:, p - 1:p + c1].mean()
    assert beyond["nll_hiergen"] == pytest.approx(want, abs=1e-5)
    assert abs(beyond["hiergen_vs_recgen"]["teacher_forced"]["nll"] - want) > 1e-3


def test_agreement_nll_with_one_level_is_the_training_nll():
    """With one level RecGen is exact on every token: its NLL equals the training forward's, here after
    a prompt that ends inside a unit."""
    cfg, model, params = tiny_model("photon", (4,), "A", False, False)
    windows, p = _windows(cfg), 5
    want = _training_nll(cfg, model, params, windows)[:, p - 1:].mean()
    out = agreement(cfg, params, windows, prompt_len=p, free_running=False, modes=["recgen"])
    assert out["nll_hiergen"] == pytest.approx(want, abs=1e-5)
    assert out["hiergen_vs_recgen"]["teacher_forced"]["nll"] == pytest.approx(want, abs=1e-5)


# ----------------------------------------------------------------------------- exact-local

def test_exact_local_is_exact_with_bounded_lower_caches():
    cfg, model, params = tiny_model("photon", (2, 2, 2), "A", True, False)
    windows = _windows(cfg, length=3 * cfg.meta_context)
    out = agreement(cfg, params, windows, prompt_len=cfg.meta_context + 3, free_running=False, modes=["exact-local"])
    local = out["hiergen_vs_exact-local"]["teacher_forced"]
    assert local["greedy_agreement"] == 1.0 and local["kl"] < 1e-8
    st, _, _ = _run(cfg, params, "exact-local", ragged_prompts(cfg), 2 * cfg.meta_context + 3)  # shapes as in
    # test_generation.py, so the compiled programs are shared
    enc = st["model"]["enc"]
    # lower levels hold one meta-context of units (4 and 2), the top is global
    assert [c["k"].shape[2] for c in enc] == [4, 2, st["tokens"].shape[1] // cfg.meta_context]


# ----------------------------------------------------------------------------- multi-query

@pytest.mark.parametrize("family,chunks,mode", [("photon", (2, 3), "hiergen"), ("vanilla", (4,), "vanilla")])
def test_shared_prompt_samples_equal_independent_copies(family, chunks, mode):
    cfg, _, params = tiny_model(family, chunks, "A", False, family == "photon")
    prompts = ragged_prompts(cfg)[1:3]
    sampling = SamplingConfig(temperature=1.0)
    shared = generate(cfg, params, prompts, mode=mode, max_new_tokens=13, sampling=sampling, seed=4, num_samples=3,
                      return_logits=True)
    copies = generate(cfg, params, [p for p in prompts for _ in range(3)], mode=mode, max_new_tokens=13,
                      sampling=sampling, seed=4, return_logits=True)
    flat = [t for per in shared.tokens for t in per]
    assert flat == [per[0] for per in copies.tokens]
    assert len(set(map(tuple, flat))) == len(flat)  # the samples differ from each other
    for x, y in zip([lg for per in shared.logits for lg in per], [per[0] for per in copies.logits]):
        np.testing.assert_allclose(x, y, atol=1e-4, rtol=0)


def test_shared_prompt_cache_is_stored_once():
    cfg, _, params = tiny_model("photon", (2, 3), "A", False, True)
    prompts = ragged_prompts(cfg)[1:3]
    st, _, _ = _run(cfg, params, "hiergen", prompts, 13, num_samples=3, sampling=SamplingConfig(temperature=1.0),
                    seed=4)
    for cache in st["model"]["enc"]:
        assert cache["shared_k"].shape[1] == 2 and cache["k"].shape[1] == 6
        assert cache["shared_len"].shape == (1, 2)
    axes = cache_axes(st["model"]["enc"][0])
    assert axes["k"] == CACHE_AXES and axes["shared_k"] == CACHE_AXES


# ----------------------------------------------------------------------------- memory

def test_cache_memory_report_matches_the_analytic_counts():
    photon = load_config("photon-tiny", overrides=["model.block_local_lower=true"]).model
    report = cache_memory_report(photon, batch=4, max_len=2048, num_samples=4, prompt_len=1024)
    per_value = 2  # bfloat16
    for mode in ("hiergen", "recgen", "exact-local"):
        entry = report["modes"][mode]
        for name, analytic in entry["analytic"].items():
            measured = entry["measured"][name]
            if name.startswith("encoder"):
                assert measured == analytic, (mode, name)
            else:  # local windows hold R + C - 1 rows, the analytic count says R + C
                level = photon.levels[int(name[-1])]
                assert measured * (level.fanout + level.chunk) == analytic * (level.fanout + level.chunk - 1)
    modes = report["modes"]
    entry = 2 * photon.kv_heads * photon.head_width * per_value
    assert modes["recgen"]["measured"]["encoder_0"] == 0
    assert modes["exact-local"]["measured"]["encoder_0"] == photon.levels[0].encoder_layers * 4 * entry
    totals = [modes[m]["measured_total"] for m in ("hiergen", "exact-local", "recgen")]
    assert totals[0] > totals[1] > totals[2]
    assert modes["hiergen"]["multiquery"]["per_sample_total"] < modes["hiergen"]["measured_total"]
    vanilla = load_config("vanilla-tiny").model
    v = cache_memory_report(vanilla, batch=2, max_len=2048)["modes"]["vanilla"]
    assert v["measured"] == v["analytic"]
