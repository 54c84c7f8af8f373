"""Parameter, FLOP and KV-cache accounting against the paper (docs/method.md sections 7 and 9)."""

from __future__ import annotations

import functools

import pytest
from conftest import tiny_config

from photon_jax.config import load_config
from photon_jax.model import accounting as analysis

PAPER_TOTALS = {
    "vanilla-600m": 610_915_968,
    "vanilla-900m": 867_114_752,
    "vanilla-1.2b": 1_184_657_280,
    "block-600m": 629_770_752,
    "block-900m": 887_878_656,
    "block-1.2b": 1_207_395_840,
    "photon-600m": 646_399_104,
    "photon-900m": 907_162_368,
    "photon-1.2b": 1_229_531_520,
}
SHAPES = {"600m": (1664, 4096), "900m": (1792, 4608), "1.2b": (1920, 5120)}  # D, F
VOCAB = 32000


@functools.lru_cache(maxsize=None)
def preset(name):
    return load_config(preset=name)


@functools.lru_cache(maxsize=None)
def breakdown(name):
    return analysis.param_breakdown(preset(name).model)


@pytest.mark.parametrize("name", sorted(PAPER_TOTALS))
def test_paper_totals_exact(name):
    assert analysis.count_params(preset(name).model) == PAPER_TOTALS[name]


@pytest.mark.parametrize("name", sorted(PAPER_TOTALS))
def test_paper_accounting_formula(name):
    """The closed-form accounting of docs/method.md section 7 gives the same totals (and the presets' depth)."""
    family, size = name.split("-")
    d, f = SHAPES[size]
    c, r, v = 4, 2, VOCAB
    layer = 4 * d * d + 3 * d * f + 2 * d
    converter = d * r * d + r * d
    m = preset(name).model
    if family == "vanilla":
        n = m.num_layers
        formula = v * d + n * layer + d + v * d
    else:
        n = m.levels[0].encoder_layers
        stack = n * layer + d
        if family == "block":
            formula = v * d // c + stack + converter + v * d + stack + v * d
        else:
            chunker = c * d + c * d * d + d  # RMSNorm(4D) + Linear(4D -> D, bias)
            formula = v * d // c + stack + chunker + stack + converter + stack + converter + v * d + stack + v * d
    assert formula == PAPER_TOTALS[name]
    assert sum(breakdown(name).values()) == formula


def test_photon_600m_breakdown():
    b = breakdown("photon-600m")
    stack = 126_106_240
    assert 4 * 31_526_144 + 1_664 == stack
    assert b == {
        "encoder_embed": 13_312_000,
        "encoder_0": stack,
        "chunker_1": 11_083_904,
        "encoder_1": stack,
        "converter_1": 5_541_120,
        "decoder_1": stack,
        "converter_0": 5_541_120,
        "decoder_embed": 53_248_000,
        "decoder_0": stack,
        "lm_head": 53_248_000,
    }  # chunker_0 is the parameter-free concatenation, so it has no entry


def test_block_600m_breakdown():
    b = breakdown("block-600m")
    stack = 8 * (4 * 1664**2 + 3 * 1664 * 4096 + 2 * 1664) + 1664
    assert b == {
        "encoder_embed": VOCAB * 1664 // 4,
        "encoder_0": stack,
        "converter_0": 1664 * 2 * 1664 + 2 * 1664,
        "decoder_0": stack,
        "decoder_embed": VOCAB * 1664,
        "lm_head": VOCAB * 1664,
    }


@pytest.mark.parametrize("size", ["tiny", "small"])
def test_cpu_presets_parameter_matched(size):
    counts = {fam: analysis.count_params(preset(f"{fam}-{size}").model) for fam in ("photon", "block", "vanilla")}
    assert min(counts.values()) > 0
    assert max(counts.values()) / min(counts.values()) <= 1.05, counts


def test_count_params_follows_the_config():
    base = tiny_config(chunks=(4, 4))
    more = tiny_config(chunks=(4, 4), layers=2)
    # q and out (4 heads of 8), k and v (2 kv heads of 8), SwiGLU, two norms
    per_layer = 2 * 32 * 4 * 8 + 2 * 32 * 2 * 8 + 3 * 32 * 64 + 2 * 32
    assert per_layer == 9280
    # four stacks (two encoders, two decoders) gain one layer each
    assert analysis.count_params(more.model) - analysis.count_params(base.model) == 4 * per_layer


# ----------------------------------------------------------------------------- KV cache

def test_kv_ratio_photon_600m_vs_vanilla_4n_layers():
    m = preset("photon-600m").model
    n = m.levels[0].encoder_layers
    vanilla = load_config(preset="photon-600m", overrides=["model.family=vanilla", f"model.num_layers={4 * n}"]).model
    assert vanilla.width == m.width and vanilla.num_layers == 16
    t = 2048
    per_entry = 2 * 32 * (1664 // 32) * 2  # K and V, 32 heads, bf16
    van = analysis.kv_bytes_per_sample(vanilla, t, "vanilla")
    assert van == {"tokens": 4 * n * t * per_entry}

    hier = analysis.kv_bytes_per_sample(m, t, "hiergen")
    rec = analysis.kv_bytes_per_sample(m, t, "recgen")
    assert set(hier) == set(rec) == {"encoder_0", "encoder_1", "decoder_0", "decoder_1"}
    # encoder caches: level 1 holds T/4 entries per layer, level 2 T/16; RecGen keeps only the top
    assert hier["encoder_0"] == n * (t // 4) * per_entry
    assert hier["encoder_1"] == n * (t // 16) * per_entry
    assert rec["encoder_0"] == 0
    assert rec["encoder_1"] == hier["encoder_1"]

    def encoders(kv):
        return sum(v for k, v in kv.items() if k.startswith("encoder_"))

    assert van["tokens"] / encoders(hier) == pytest.approx(12.8, rel=1e-12)
    assert van["tokens"] / encoders(rec) == pytest.approx(64.0, rel=1e-12)
    # local decoder caches are bounded by one window, whatever the context
    for mode in ("hiergen", "recgen"):
        long = analysis.kv_bytes_per_sample(m, 4 * t, mode)
        for i in range(2):
            assert long[f"decoder_{i}"] == hier[f"decoder_{i}"] == n * (2 + 4) * per_entry
            assert long[f"encoder_{i}"] == 4 * analysis.kv_bytes_per_sample(m, t, mode)[f"encoder_{i}"]


def test_kv_exact_local_bounded_and_bytes_per_value():
    m = load_config(preset="photon-600m", overrides=["model.block_local_lower=true"]).model
    assert "exact-local" in analysis.modes_for(m)
    assert "exact-local" not in analysis.modes_for(preset("photon-600m").model)
    per_entry = 2 * 32 * 52 * 2
    for t in (2048, 8192):
        kv = analysis.kv_bytes_per_sample(m, t, "exact-local")
        assert kv["encoder_0"] == 4 * 4 * per_entry  # one meta-context: C_2 = 4 level-1 entries per layer
        assert kv["encoder_1"] == 4 * (t // 16) * per_entry
    fp32 = analysis.kv_bytes_per_sample(m, 2048, "hiergen", bytes_per_value=4)
    bf16 = analysis.kv_bytes_per_sample(m, 2048, "hiergen")
    assert all(fp32[k] == 2 * bf16[k] for k in bf16)
    with pytest.raises(ValueError):
        analysis.kv_bytes_per_sample(m, 2048, "nonsense")


def test_kv_gqa_shrinks_cache():
    mha = tiny_config(family="vanilla", **{"model__num_kv_heads": 4}).model
    gqa = tiny_config(family="vanilla").model  # kv heads 2
    assert analysis.kv_bytes_per_sample(mha, 64, "vanilla")["tokens"] == 2 * analysis.kv_bytes_per_sample(
        gqa, 64, "vanilla")["tokens"]


# ----------------------------------------------------------------------------- FLOPs

@pytest.mark.parametrize("size", ["600m", "900m", "1.2b"])
def test_photon_trains_cheaper_than_vanilla_at_matched_params(size):
    flops = {fam: analysis.train_flops_per_token(preset(f"{fam}-{size}").model, 2048)
             for fam in ("vanilla", "block", "photon")}
    assert flops["photon"] < flops["block"] < flops["vanilla"], flops


@pytest.mark.parametrize("size", ["tiny", "small"])
def test_photon_trains_cheaper_than_vanilla_cpu_presets(size):
    p, v = preset(f"photon-{size}"), preset(f"vanilla-{size}")
    assert analysis.train_flops_per_token(p.model, p.data.seq_len) < analysis.train_flops_per_token(
        v.model, v.data.seq_len)


def test_forward_flops_tiny_vanilla_by_hand():
    # vocab 64, width 32, ffn 64, 4 heads of 8, 2 kv heads, 2 layers, sequence 16
    m = tiny_config(family="vanilla").model
    assert (m.vocab_size, m.width, m.ffn_width, m.num_heads, m.kv_heads, m.head_width, m.num_layers) == (
        64, 32, 64, 4, 2, 8, 2)
    t = 16
    macs = 32 * 32 + 32 * 16 + 32 * 16 + 32 * 32 + 3 * 32 * 64  # q, k, v, out, SwiGLU = 9216
    attention = 2 * 2 * 32 * sum(range(1, t + 1)) / t  # QK^T and AV over i+1 keys, averaged = 1088
    per_token = 2 * (2 * macs + attention) + 2 * 32 * 64
    assert per_token == 43136
    assert analysis.forward_flops_per_token(m, t) == pytest.approx(per_token, rel=1e-12)
    assert analysis.train_flops_per_token(m, t) == pytest.approx(3 * per_token, rel=1e-12)


def test_forward_flops_tiny_block_by_hand():
    # one level: chunk 4, fanout 2, 1 encoder + 1 decoder layer, width 32, sequence 16 (4 units)
    m = tiny_config(chunks=(4,)).model
    t, units, window = 16, 4, 2 + 4 - 1
    layer = 2 * (32 * 32 * 2 + 32 * 16 * 2 + 3 * 32 * 64)  # per position
    attention = lambda s: 2 * 2 * 32 * s * (s + 1) / 2  # noqa: E731  (causal, summed over s positions)
    encoder = units * layer + attention(units)
    decoders = units * (window * layer + attention(window))
    converters = units * 2 * 32 * (2 * 32)
    head = t * 2 * 32 * 64
    assert m.chunker_kind(0) == "concat"  # 4 x 8-wide embeddings: no chunker FLOPs
    expected = (encoder + decoders + converters + head) / t
    assert expected == 33328
    assert analysis.forward_flops_per_token(m, t) == pytest.approx(expected, rel=1e-12)


def test_report_is_consistent():
    cfg = preset("photon-600m")
    rep = analysis.report(cfg.model, cfg.data.seq_len, 2048)
    assert rep["total_params"] == PAPER_TOTALS["photon-600m"]
    assert rep["breakdown"] == breakdown("photon-600m")
    for mode, by_cache in rep["kv_bytes_by_cache"].items():
        assert rep["kv_bytes_per_sample"][mode] == sum(by_cache.values())
    assert set(rep["kv_bytes_per_sample"]) == {"hiergen", "recgen"}
