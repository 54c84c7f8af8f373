"""Numerical equivalences of the forward: scan vs unrolled layers, remat policies, bf16 vs fp32,
grouped-query attention, the L_rec term and its stop-gradient, and gradient reach (docs/method.md 4, 10)."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_variables, tiny_config

from photon_jax.model import accounting as analysis
from photon_jax.model import build_model
from photon_jax.model.convert import unroll_layers
from photon_jax.model.losses import loss_fn, token_nll
from photon_jax.runs import checkpoint as ckpt

# LLVM optimisation off: the same computations, about half the compile time on a CPU.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def random_params(model, seq_len, seed=0):
    return random_variables(model, seq_len, seed)["params"]


def real_params(model, seq_len, seed=0):
    return nn.unbox(jit(model.init)(jax.random.PRNGKey(seed), jnp.zeros((1, seq_len), jnp.int32)))["params"]


def tokens_for(cfg, batch=2, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, cfg.model.vocab_size, (batch, cfg.data.seq_len)),
                       jnp.int32)


def forward(cfg):
    model = build_model(cfg.model)
    return jit(lambda p, x: model.apply({"params": p}, x))


def shapes(tree):
    return jax.tree.map(lambda x: (tuple(x.shape), jnp.dtype(x.dtype)), tree)


def max_abs_diff(a, b):
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# ----------------------------------------------------------------------------- scan vs unrolled

@pytest.mark.parametrize("family", ["photon", "vanilla"])
def test_scan_and_unrolled_layers_agree(family):
    scanned_cfg = tiny_config(family=family, chunks=(4, 4), layers=2, seq_mult=2)
    unrolled_cfg = tiny_config(family=family, chunks=(4, 4), layers=2, seq_mult=2, model__scan_layers=False)
    seq_len = scanned_cfg.data.seq_len
    params = random_params(build_model(scanned_cfg.model), seq_len)
    converted = unroll_layers(params)
    # the conversion produces exactly the unrolled model's parameter tree
    unrolled_abstract = nn.unbox(jax.eval_shape(build_model(unrolled_cfg.model).init, jax.random.PRNGKey(0),
                                                jnp.zeros((1, seq_len), jnp.int32)))["params"]
    assert shapes(converted) == shapes(unrolled_abstract)
    assert "layers_1" in str(jax.tree_util.tree_structure(converted))
    tokens = tokens_for(scanned_cfg)
    a = forward(scanned_cfg)(params, tokens)[0]
    b = forward(unrolled_cfg)(converted, tokens)[0]
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    # the layers are really distinct: swapping them changes the output
    swapped = jax.tree.map(lambda x: x[::-1] if x.ndim and x.shape[0] == 2 else x, params)
    assert not np.allclose(np.asarray(forward(scanned_cfg)(swapped, tokens)[0]), np.asarray(a), atol=1e-4)


@pytest.mark.parametrize("family", ["photon", "vanilla"])
def test_unrolled_scan_gives_the_same_loss_and_gradients_and_loads_the_same_checkpoint(family):
    looped_cfg = tiny_config(family=family, chunks=(4, 4), layers=2, seq_mult=2, model__dtype="float32")
    unrolled_cfg = tiny_config(family=family, chunks=(4, 4), layers=2, seq_mult=2, model__dtype="float32",
                               model__scan_unroll=2)
    params = random_params(build_model(looped_cfg.model), looped_cfg.data.seq_len)
    tokens = tokens_for(looped_cfg)

    def loss_and_grads(cfg):
        model = build_model(cfg.model)
        loss = lambda p: jnp.mean(model.apply({"params": p}, tokens)[0] ** 2)  # noqa: E731
        return jit(jax.value_and_grad(loss))(params)

    (loss_a, grads_a), (loss_b, grads_b) = loss_and_grads(looped_cfg), loss_and_grads(unrolled_cfg)
    np.testing.assert_allclose(float(loss_a), float(loss_b), rtol=1e-6)
    assert max_abs_diff(grads_a, grads_b) < 1e-5
    # the step's HLO really differs: the unrolled stack has no loop over layers
    def loops(cfg):
        model = build_model(cfg.model)
        return jax.jit(lambda p: model.apply({"params": p}, tokens)).lower(params).as_text().count("stablehlo.while")
    assert loops(unrolled_cfg) < loops(looped_cfg)
    assert ckpt.model_mismatch(looped_cfg, unrolled_cfg) is None


# ----------------------------------------------------------------------------- remat

def _grad_cfg(family, alignment, chunks, start_latent, remat="none", dtype="float32"):
    # three meta-contexts: with two, the only top-level state in use attends to itself alone, so
    # the top encoder's query/key get no gradient whatever the model does
    extra = {"model__remat": remat, "model__dtype": dtype}
    if family == "photon":
        extra["model__start_latent"] = start_latent
    return tiny_config(family=family, chunks=chunks, alignment=alignment, layers=1, seq_mult=3, **extra)


@functools.lru_cache(maxsize=None)
def _params(family, alignment, chunks, start_latent, init):
    cfg = _grad_cfg(family, alignment, chunks, start_latent)
    make = real_params if init == "real" else random_params
    return make(build_model(cfg.model), cfg.data.seq_len)


@functools.lru_cache(maxsize=None)
def _value_and_grads(family, remat, alignment="A", chunks=(4, 4), start_latent="learned", init="real"):
    """(token loss, logits, grads, params, metrics) of the token loss for one config (cached: each costs a compile;
    the remat tests and the vanilla gradient-reach test share the remat="none" entry)."""
    cfg = _grad_cfg(family, alignment, chunks, start_latent, remat)
    model = build_model(cfg.model)
    params = _params(family, alignment, chunks, start_latent, init)
    tokens = tokens_for(cfg)
    mask = jnp.ones(tokens.shape, jnp.float32)

    def loss(p):
        logits, aux = model.apply({"params": p}, tokens)
        total, metrics = loss_fn(cfg.model, logits, aux, tokens, mask)
        return total, (logits, metrics)

    (value, (logits, metrics)), grads = jit(jax.value_and_grad(loss, has_aux=True))(params)
    assert float(value) == pytest.approx(float(metrics["token_loss"]))
    return value, logits, grads, params, metrics


# Remat lives in the Stack that every family and PHOTON stack share; vanilla is its cheapest host.
@pytest.mark.parametrize("remat", ["full", "dots"])
@pytest.mark.parametrize("family", ["vanilla"])
def test_remat_leaves_outputs_and_gradients_unchanged(family, remat):
    v0, logits0, g0, p0, _ = _value_and_grads(family, "none")
    v1, logits1, g1, p1, _ = _value_and_grads(family, remat)
    assert shapes(p0) == shapes(p1)
    np.testing.assert_allclose(np.asarray(logits1), np.asarray(logits0), rtol=0, atol=1e-6)
    assert abs(float(v1) - float(v0)) <= 1e-6
    assert jax.tree_util.tree_structure(g0) == jax.tree_util.tree_structure(g1)
    assert max_abs_diff(g0, g1) <= 1e-5


# ----------------------------------------------------------------------------- bf16 vs fp32

@pytest.mark.parametrize("family", ["photon", "vanilla"])
def test_bf16_compute_close_to_fp32(family):
    cfg32 = _grad_cfg(family, "A", (4, 4), "learned")
    cfg16 = _grad_cfg(family, "A", (4, 4), "learned", dtype="bfloat16")
    params = _params(family, "A", (4, 4), "learned", "random")
    tokens = tokens_for(cfg32, batch=4)
    a = forward(cfg32)(params, tokens)[0]
    b = forward(cfg16)(params, tokens)[0]
    assert a.dtype == b.dtype == jnp.float32  # logits come back in fp32 either way
    assert not np.array_equal(np.asarray(a), np.asarray(b))  # bf16 really was used
    la, lb = jax.nn.log_softmax(a), jax.nn.log_softmax(b)
    assert float(jnp.mean(jnp.abs(la - lb))) < 5e-2
    agreement = float(jnp.mean(jnp.argmax(a, -1) == jnp.argmax(b, -1)))
    assert agreement > 0.9, agreement


# ----------------------------------------------------------------------------- GQA

def test_gqa_fewer_params_and_equals_mha_with_shared_heads():
    gqa_cfg = tiny_config(chunks=(4, 4), seq_mult=2)  # 4 heads, 2 kv heads
    mha_cfg = tiny_config(chunks=(4, 4), seq_mult=2, model__num_kv_heads=4)
    assert gqa_cfg.model.kv_heads == 2 and mha_cfg.model.kv_heads == 4
    # four stacks of one layer; each loses k and v projections of 2 heads of width 8
    assert analysis.count_params(mha_cfg.model) - analysis.count_params(gqa_cfg.model) == 4 * 2 * 32 * 2 * 8
    seq_len = gqa_cfg.data.seq_len
    params = random_params(build_model(gqa_cfg.model), seq_len)
    tokens = tokens_for(gqa_cfg)
    out_gqa = forward(gqa_cfg)(params, tokens)[0]
    assert bool(jnp.all(jnp.isfinite(out_gqa)))

    # MHA whose kv head h is GQA kv head h // 2 (query heads 0,1 share kv head 0, 2,3 share 1)
    def widen(path, x):
        names = [getattr(k, "key", None) for k in path]
        if ("key" in names or "value" in names) and names[-1] == "kernel":
            return jnp.repeat(x, 2, axis=-2)
        return x

    mha_params = jax.tree_util.tree_map_with_path(widen, params)
    mha_abstract = nn.unbox(jax.eval_shape(build_model(mha_cfg.model).init, jax.random.PRNGKey(0),
                                           jnp.zeros((1, seq_len), jnp.int32)))["params"]
    assert shapes(mha_params) == shapes(mha_abstract)
    out_mha = forward(mha_cfg)(mha_params, tokens)[0]
    np.testing.assert_allclose(np.asarray(out_mha), np.asarray(out_gqa), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- L_rec

def _rec_setup(chunks=(4, 4), stop_gradient=True, alpha=0.3):
    cfg = tiny_config(chunks=chunks, seq_mult=2, model__rec_alpha=alpha, model__rec_stop_gradient=stop_gradient)
    return cfg, build_model(cfg.model)


def check_loss_identity(cfg, logits, aux, tokens):
    """loss_fn: L = L_token + alpha * L_rec with L_token the mean NLL of tokens[:, 1:] under logits[:, 1:]."""
    mask = jnp.ones(tokens.shape, jnp.float32)
    total, metrics = loss_fn(cfg.model, logits, aux, tokens, mask)
    rec = float(metrics["rec_loss"])
    levels = len(cfg.model.levels)
    assert 1e-3 < rec <= 2.0 * (levels - 1)  # a sum of L - 1 cosine distances, each in [0, 2]
    assert cfg.model.rec_alpha == 0.3
    assert float(total) == pytest.approx(float(metrics["token_loss"]) + 0.3 * rec, rel=1e-6)
    assert float(metrics["loss"]) == float(total)
    logp = jax.nn.log_softmax(logits[:, 1:])
    nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)
    assert float(metrics["token_loss"]) == pytest.approx(float(jnp.mean(nll)), rel=1e-5)
    assert float(metrics["target_tokens"]) == tokens.shape[0] * (tokens.shape[1] - 1)
    # alpha = 0: the token loss alone, whatever L_rec is
    no_rec = _rec_setup(tuple(lv.chunk for lv in cfg.model.levels), alpha=0.0)[0]
    total0, metrics0 = loss_fn(no_rec.model, logits, aux, tokens, mask)
    assert float(total0) == float(metrics0["token_loss"]) == float(metrics["token_loss"])


def test_loss_is_token_plus_alpha_rec_three_levels():
    cfg, model = _rec_setup((2, 2, 2))
    params = random_params(model, cfg.data.seq_len)
    tokens = tokens_for(cfg)
    logits, aux = forward(cfg)(params, tokens)
    check_loss_identity(cfg, logits, aux, tokens)


def test_one_level_has_no_rec_term():
    """L = 1 has no level where both a reconstruction and an encoder target exist."""
    metrics = _value_and_grads("photon", "none", "A", (4,), init="random")[4]
    assert float(metrics["rec_loss"]) == 0.0


# ----------------------------------------------------------------------------- token-loss alignment

def _log_softmax64(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.mark.parametrize("family,offset", [("vanilla", 1), ("photon", 0)])
def test_token_nll_alignment_identity_and_perturbation(family, offset):
    """Targets are tokens[:, 1:] for every family. Vanilla scores target tokens[:, i+1] with logits[:, i]
    (which see t_<=i); PHOTON scores tokens[:, i] with logits[:, i] (which see t_<i). `offset` is the
    shift between the target's position and the logits that score it (1 vanilla, 0 PHOTON). Checked
    element by element against a float64 log-softmax computed here, then by perturbing each target token."""
    cfg = tiny_config(family=family, chunks=(4, 4), seq_mult=2)
    t, vocab = cfg.data.seq_len, cfg.model.vocab_size
    params = random_params(build_model(cfg.model), t)
    run = forward(cfg)
    tokens = tokens_for(cfg)
    tok = np.asarray(tokens)
    rows = np.arange(tok.shape[0])
    logits, aux = run(params, tokens)
    logits = np.asarray(logits)
    nll = np.asarray(token_nll(cfg.model, jnp.asarray(logits), tokens))
    assert nll.shape == (tok.shape[0], t - 1)

    # target j is token j + 1, scored by the logits at position j + 1 - offset
    logp = _log_softmax64(logits)
    expected = np.stack([-logp[rows, j + 1 - offset, tok[:, j + 1]] for j in range(t - 1)], axis=1)
    np.testing.assert_allclose(nll, expected, rtol=1e-5, atol=1e-5)
    # the other family's alignment gives other numbers: the identity above can fail
    wrong = np.stack([-logp[rows, j + offset, tok[:, j + 1]] for j in range(t - 1)], axis=1)
    assert np.mean(np.abs(wrong - expected) > 1e-3) > 0.9

    # loss_fn averages exactly these over the unmasked targets (mask[:, i] masks target i - 1)
    mask = np.ones(tok.shape, np.float32)
    mask[1, -3:] = 0.0  # row 1 ends in three pads: its last three targets drop out
    _, metrics = loss_fn(cfg.model, jnp.asarray(logits), aux, tokens, jnp.asarray(mask))
    keep = mask[:, 1:].astype(bool)
    assert float(metrics["target_tokens"]) == keep.sum() == 2 * (t - 1) - 3
    assert float(metrics["token_loss"]) == pytest.approx(expected[keep].mean(), rel=1e-5)

    # changing target token p = j + 1 (row 0) leaves every logit before the one that scores it bit-identical,
    # the earlier targets' nll unchanged, and changes target j's nll to that of the new token
    rng = np.random.default_rng(7)
    for j in range(t - 1):
        p = j + 1
        changed = tok.copy()
        changed[0, p] = (tok[0, p] + rng.integers(1, vocab)) % vocab
        logits2 = np.asarray(run(params, jnp.asarray(changed))[0])
        scorer = p - offset  # the position whose logits score token p
        np.testing.assert_array_equal(logits2[:, :scorer + 1], logits[:, :scorer + 1],
                                      err_msg=f"{family}: changing token {p} changed logits at <= {scorer}")
        if scorer + 1 < t:  # and the change does reach the next position's logits
            assert not np.array_equal(logits2[0, scorer + 1], logits[0, scorer + 1]), (family, p)
        nll2 = np.asarray(token_nll(cfg.model, jnp.asarray(logits2), jnp.asarray(changed)))
        np.testing.assert_array_equal(nll2[:, :j], nll[:, :j])
        np.testing.assert_array_equal(nll2[1], nll[1])
        assert nll2[0, j] != nll[0, j], (family, j)
        assert nll2[0, j] == pytest.approx(-logp[0, scorer, changed[0, p]], rel=1e-5, abs=1e-5)


def test_rec_stop_gradient():
    """L_rec = dist(Xhat^(1), X^(1)) for L = 2. The target X^(1) comes from encoder_0 (and the narrow
    embedder). Stopping its gradient must change exactly the gradients of those, leave the gradients
    of modules that only feed Xhat^(1) unchanged, and give no gradient to the level-1 decoder side."""
    grads, values = {}, {}
    for sg in (True, False):
        cfg, model = _rec_setup(stop_gradient=sg)
        params = random_params(build_model(_rec_setup()[0].model), cfg.data.seq_len)
        tokens = tokens_for(cfg)

        def rec(p, model=model):
            logits, aux = model.apply({"params": p}, tokens)
            return aux["rec_loss"], (logits, aux)

        (values[sg], (logits, aux)), grads[sg] = jit(jax.value_and_grad(rec, has_aux=True))(params)
        check_loss_identity(cfg, logits, aux, tokens)
        grads[sg] = jax.device_get(grads[sg])
    assert float(values[True]) == float(values[False])  # the forward value does not change

    def norm(tree):
        return float(np.sqrt(sum(np.sum(np.square(x)) for x in jax.tree.leaves(tree))))

    # modules that only feed the reconstruction: same gradient either way
    for name in ("encoder_1", "chunker_1", "converter_1", "decoder_1"):
        assert norm(grads[True][name]) > 0, name
        assert max_abs_diff(grads[True][name], grads[False][name]) <= 1e-6 * max(1.0, norm(grads[True][name])), name
    # modules that produce the target X^(1): the target path adds gradient when not stopped
    for name in ("encoder_0", "encoder_embed"):
        diff = max_abs_diff(grads[True][name], grads[False][name])
        assert diff > 1e-4 * norm(grads[False][name]), name
    # modules below the reconstruction take no part in L_rec
    for name in ("decoder_0", "converter_0", "decoder_embed", "lm_head"):
        for sg in (True, False):
            assert norm(grads[sg][name]) == 0.0, (name, sg)


# ----------------------------------------------------------------------------- gradient reach

CASES = [("photon", "A", (2, 2, 2)), ("photon", "C", (4, 4)), ("photon", "A", (4,)), ("vanilla", "A", (4, 4))]


@pytest.mark.parametrize("family,alignment,chunks", CASES, ids=[f"{f}-{a}-L{len(c)}" for f, a, c in CASES])
def test_token_loss_reaches_every_parameter(family, alignment, chunks):
    """docs/method.md 10: no detached encoder states; every level is on the token-loss path."""
    # the real init (zero biases, unit norms) where other tests already compiled it, else random values
    init = "real" if (family, chunks) in (("photon", (2, 2, 2)), ("vanilla", (4, 4))) else "random"
    grads = _value_and_grads(family, "none", alignment, chunks, init=init)[2]
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    dead = [jax.tree_util.keystr(path) for path, g in flat if not bool(jnp.any(g != 0))]
    assert not dead, f"no token-loss gradient for {dead}"
    expected = {"lm_head"}
    if family == "photon":
        n = len(chunks)
        expected |= {"encoder_embed", "decoder_embed", *(f"encoder_{i}" for i in range(n)),
                     *(f"decoder_{i}" for i in range(n)), *(f"converter_{i}" for i in range(n)),
                     *(f"chunker_{i}" for i in range(1, n))}
        starts = {f"start_{i}" for i in (range(n) if alignment in ("B", "C") else [n - 1])}
        expected |= starts
    else:
        expected |= {"embed", "stack"}
    assert set(grads) == expected
