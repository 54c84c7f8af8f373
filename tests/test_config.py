"""Config loading, overrides, JSON round trip and one-line ConfigErrors (photon_jax/config/)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from conftest import tiny_overrides
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from photon_jax.config import (
    Config,
    LevelConfig,
    ModelConfig,
    config_from_json,
    list_presets,
    load_config,
    parse_overrides,
)
from photon_jax.errors import ConfigError, UserError
from photon_jax.model import accounting as analysis

PAPER_PRESETS = [f"{fam}-{size}" for fam in ("vanilla", "block", "photon") for size in ("600m", "900m", "1.2b")]
CPU_PRESETS = [f"{fam}-{size}" for fam in ("vanilla", "block", "photon") for size in ("tiny", "small")]


# ----------------------------------------------------------------------------- presets

def test_preset_list_is_complete():
    assert set(PAPER_PRESETS + CPU_PRESETS) <= set(list_presets())


@pytest.mark.parametrize("name", PAPER_PRESETS + CPU_PRESETS)
def test_presets_load_and_validate(name):
    cfg = load_config(preset=name)
    assert isinstance(cfg, Config)
    assert cfg.name == name
    assert cfg.validate() is cfg
    family = name.split("-")[0]
    assert cfg.model.family == ("vanilla" if family == "vanilla" else "photon")
    if family == "block":
        assert len(cfg.model.levels) == 1
    if family == "photon":
        assert [lv.chunk for lv in cfg.model.levels] == [4, 4]
    assert cfg.data.seq_len % cfg.model.meta_context == 0


def test_paper_preset_shapes():
    m = load_config(preset="photon-600m").model
    assert (m.vocab_size, m.width, m.ffn_width, m.num_heads, m.kv_heads) == (32000, 1664, 4096, 32, 32)
    assert m.levels == (LevelConfig(4, 2, 4, 4), LevelConfig(4, 2, 4, 4))
    assert m.embed_width == 416 and m.chunker_kind(0) == "concat" and m.chunker_kind(1) == "norm_linear"


# ----------------------------------------------------------------------------- overrides

def test_dotted_overrides():
    cfg = load_config(preset="photon-tiny", overrides=["model.width=256", "model.levels.0.chunk=2",
                                                       "train.steps=7", "data.seq_len=64", "name=x"])
    assert cfg.model.width == 256
    assert [lv.chunk for lv in cfg.model.levels] == [2, 4]
    assert cfg.model.levels[0].encoder_layers == 2  # the rest of the level is kept
    assert cfg.train.steps == 7 and cfg.data.seq_len == 64 and cfg.name == "x"
    assert cfg.model.meta_context == 8


def test_override_values_are_yaml():
    cfg = load_config(preset="photon-tiny", overrides=[
        "model.rope_theta=500000", "model.scan_layers=false", "model.rec_alpha=0.3", "model.alignment=B"])
    assert cfg.model.rope_theta == 500000.0 and isinstance(cfg.model.rope_theta, float)
    assert cfg.model.scan_layers is False and cfg.model.rec_alpha == 0.3 and cfg.model.alignment == "B"


def test_list_override_replaces_levels():
    cfg = load_config(preset="photon-tiny", overrides=["model.levels=[{chunk: 2}]"])
    assert cfg.model.levels == (LevelConfig(chunk=2),)
    assert isinstance(cfg.model.levels, tuple)
    cfg = load_config(overrides=tiny_overrides(chunks=(2, 3)))
    assert [lv.chunk for lv in cfg.model.levels] == [2, 3] and cfg.data.seq_len == 24


def test_overrides_without_preset_use_defaults():
    cfg = load_config(overrides=["model.width=256"])
    default = Config()
    assert cfg.model == dataclasses.replace(default.model, width=256)
    assert cfg.train == default.train and cfg.name == "custom"


def test_yaml_file_with_base(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("base: photon-tiny\nmodel:\n  width: 64\ntrain:\n  steps: 3\n")
    cfg = load_config(path=str(path))
    tiny = load_config(preset="photon-tiny")
    assert cfg.model == dataclasses.replace(tiny.model, width=64)
    assert cfg.train.steps == 3 and cfg.data == tiny.data
    cfg = load_config(path=str(path), overrides=["model.width=32"])
    assert cfg.model.width == 32


def test_parse_overrides_tree():
    assert parse_overrides(["a.b=1", "a.c=x", "d=[1, 2]"]) == {"a": {"b": 1, "c": "x"}, "d": [1, 2]}


# ----------------------------------------------------------------------------- JSON round trip

@pytest.mark.parametrize("name", ["photon-600m", "block-tiny", "vanilla-small", "photon-tiny"])
def test_json_round_trip_presets(name):
    cfg = load_config(preset=name, overrides=["model.alignment=C", "model.rec_alpha=0.25"]
                      if name.startswith("photon") else [])
    back = config_from_json(cfg.to_json())
    assert back == cfg
    assert back.to_json() == cfg.to_json()
    assert json.loads(cfg.to_json())["model"]["width"] == cfg.model.width


def test_json_round_trip_default_config():
    """The dataclass defaults (mesh.rules holds nested tuples) must survive the round trip too."""
    cfg = Config().validate()
    back = config_from_json(cfg.to_json())
    assert back.mesh == cfg.mesh
    assert back == cfg


def test_loaded_config_is_hashable():
    """Configs are frozen dataclasses; a list smuggled in from YAML/JSON makes them unhashable."""
    cfg = load_config(preset="photon-tiny")
    hash(cfg.model)
    hash(cfg.mesh)
    hash(cfg)


# ----------------------------------------------------------------------------- one-line errors

BAD = [
    # (overrides on photon-tiny, words the message must contain)
    (["data.seq_len=100"], ["data.seq_len=100", "16"]),
    (["model.levels.0.chunk=3"], ["seq_len", "12"]),
    (["model.num_heads=3"], ["num_heads=3", "width=128"]),
    (["model.num_kv_heads=3"], ["num_kv_heads=3", "num_heads=4"]),
    (["foo=1"], ["unknown key", "foo"]),
    (["model.foo=1"], ["unknown key", "model.foo"]),
    (["model.levels.0.foo=1"], ["unknown key", "foo"]),
    (["model.levels=[{chunk: 2, foo: 1}]"], ["unknown key", "foo"]),
    (["model.width=-4"], ["model.width", "-4"]),
    (["model.vocab_size=0"], ["model.vocab_size"]),
    (["model.levels.1.encoder_layers=-1"], ["model.levels.1", "encoder_layers"]),
    (["data.seq_len=-16"], ["data.seq_len"]),
    (["train.batch_size=-2"], ["train.batch_size"]),
    (["model.levels=[]"], ["at least one level"]),
    (["model.width=abc"], ["model.width", "integer"]),
    (["model.width=1.5"], ["model.width", "integer"]),
    (["model.num_heads=true"], ["model.num_heads", "integer"]),
    (["model.scan_layers=maybe"], ["model.scan_layers"]),
    (["model.rec_alpha=much"], ["model.rec_alpha", "number"]),
    (["model.levels=5"], ["model.levels", "list"]),
    (["model.levels.0=5"], ["model.levels.0", "mapping"]),
    (["model.levels.7.chunk=2"], ["model.levels.7", "no such list element"]),
    (["model.levels.0.chunk=1"], ["model.levels.0.chunk", ">= 2"]),
    (["model.alignment=D"], ["model.alignment", "'D'"]),
    (["model.levels.1.chunker=concat"], ["model.levels.1", "concat", "4*128 != 128"]),
    (["model.levels.0.chunker=concat", "model.encoder_embed_width=16"], ["model.levels.0", "concat"]),
    (["model.levels.0.chunker=glue"], ["model.levels.0.chunker", "glue"]),
    (["model.head_dim=7"], ["head dimension 7", "even"]),
    (["model.start_latent=random"], ["model.start_latent"]),
    (["model.remat=some"], ["model.remat"]),
    (["model.dtype=int8"], ["model.dtype", "int8"]),
    (["model.family=rnn"], ["model.family", "rnn"]),
    (["model.width"], ["not key=value"]),
    (["model..width=3"], ["empty key"]),
    (["model.levels=[{chunk: 2}]", "model.levels.0.chunk=3"], ["conflicts"]),
    (["train.nonfinite=ignore"], ["train.nonfinite"]),
    (["mesh.data=0"], ["mesh.data"]),
]


@pytest.mark.parametrize("overrides,words", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_config_raises_one_line_config_error(overrides, words):
    with pytest.raises(ConfigError) as info:
        load_config(preset="photon-tiny", overrides=overrides)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    assert isinstance(info.value, UserError) and info.value.exit_code == 2


def test_vanilla_bad_layers():
    with pytest.raises(ConfigError, match="num_layers"):
        load_config(preset="vanilla-tiny", overrides=["model.num_layers=0"])
    # levels are not used by vanilla, so a seq_len that is no multiple of 16 is fine there
    assert load_config(preset="vanilla-tiny", overrides=["data.seq_len=100"]).data.seq_len == 100


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset 'nope'") as info:
        load_config(preset="nope")
    assert "photon-tiny" in str(info.value)  # lists the known ones


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(path=str(tmp_path / "missing.yaml"))
    not_mapping = tmp_path / "list.yaml"
    not_mapping.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path=str(not_mapping))
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: {width: [\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_config(path=str(broken))
    assert "\n" not in str(info.value)
    bad_base = tmp_path / "base.yaml"
    bad_base.write_text("base: nope\n")
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config(path=str(bad_base))
    with pytest.raises(ConfigError, match="not both"):
        load_config(preset="photon-tiny", path=str(bad_base))


def test_unknown_keys_of_mixed_types():
    """YAML keys need not be strings; two unknown keys of different types must still be a ConfigError."""
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(preset="photon-tiny", overrides=["model.levels=[{chunk: 2, 1: 3, foo: 4}]"])


@pytest.mark.parametrize("text", ["{not json", "5", "null", "[]", '"text"'])
def test_saved_config_not_an_object(text):
    with pytest.raises(ConfigError):
        config_from_json(text)


def test_saved_config_is_validated():
    data = json.loads(load_config(preset="photon-tiny").to_json())
    data["model"]["num_heads"] = 3
    with pytest.raises(ConfigError, match="num_heads"):
        config_from_json(json.dumps(data))
    data["model"]["num_heads"] = 4
    data["model"]["surprise"] = 1
    with pytest.raises(ConfigError, match="surprise"):
        config_from_json(json.dumps(data))


# ----------------------------------------------------------------------------- property

@st.composite
def model_configs(draw):
    """(model dict, expect_valid): a valid small model, about half the time with one bad field swapped in
    (a swap can be harmless, e.g. vanilla ignores the hierarchy fields, so only the unswapped must validate)."""
    heads = draw(st.sampled_from([1, 2, 4]))
    head_width = draw(st.sampled_from([2, 4, 8]))
    explicit_head_dim = draw(st.booleans())
    width = draw(st.sampled_from([6, 10, 12, 20])) if explicit_head_dim else heads * head_width
    levels = []
    for i in range(draw(st.integers(1, 3))):
        chunk = draw(st.integers(2, 4))
        kind = draw(st.sampled_from(["auto", "norm_linear"] + (["concat"] if i == 0 else [])))
        levels.append({"chunk": chunk, "fanout": draw(st.integers(1, 3)), "encoder_layers": draw(st.integers(1, 2)),
                       "decoder_layers": draw(st.integers(1, 2)), "chunker": kind})
    embed_width = 0
    if levels[0]["chunker"] == "concat":
        embed_width = draw(st.integers(1, 8))
        width = embed_width * levels[0]["chunk"]
        if not explicit_head_dim and width % heads:
            heads = 1
        head_width = width // heads if not explicit_head_dim else head_width
        if head_width % 2:
            explicit_head_dim, head_width = True, 2
    elif width < levels[0]["chunk"]:
        embed_width = 2
    model = {
        "family": draw(st.sampled_from(["photon", "photon", "vanilla"])),
        "vocab_size": draw(st.integers(1, 40)),
        "width": width,
        "ffn_width": draw(st.integers(1, 40)),
        "num_heads": heads,
        "num_kv_heads": draw(st.sampled_from([0] + [k for k in (1, 2, 4) if heads % k == 0])),
        "head_dim": head_width if explicit_head_dim else 0,
        "tie_embeddings": draw(st.booleans()),
        "num_layers": draw(st.integers(1, 2)),
        "levels": levels,
        "encoder_embed_width": embed_width,
        "alignment": draw(st.sampled_from(["A", "B", "C"])),
        "block_local_lower": draw(st.booleans()),
        "start_latent": draw(st.sampled_from(["fixed", "learned"])),
        "rec_alpha": draw(st.sampled_from([0.0, 0.3])),
        "rec_stop_gradient": draw(st.booleans()),
        "dtype": draw(st.sampled_from(["float32", "bfloat16"])),
        "scan_layers": draw(st.booleans()),
        "remat": draw(st.sampled_from(["none", "full", "dots"])),
    }
    bad = draw(st.sampled_from([None] * 25 + [
        ("width", -4), ("width", "wide"), ("width", 2.5), ("vocab_size", 0), ("ffn_width", -1),
        ("num_heads", 0), ("num_kv_heads", 3), ("num_kv_heads", -1), ("head_dim", 3), ("head_dim", -2),
        ("levels", []), ("levels", {"chunk": 2}), ("levels", [{"chunk": 1}]), ("levels", [{"chunk": 2, "fanout": 0}]),
        ("levels", [{"chunk": 2, "encoder_layers": 0}]), ("levels", [{"chunk": "two"}]),
        ("levels", [{"chunk": 2, "chunker": "glue"}]), ("levels", [{"chunk": 2, "size": 3}]), ("levels", [7]),
        ("alignment", "Z"), ("start_latent", "none"), ("rec_alpha", -1.0), ("dtype", "int4"),
        ("remat", "all"), ("family", "mamba"), ("encoder_embed_width", -1), ("scan_layers", "yes"),
        ("num_layers", 0), ("scan_unroll", 0), ("bogus", 1),
    ]))
    if bad is not None:
        model[bad[0]] = bad[1]
    return model, bad is None


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(case=model_configs())
def test_random_model_configs_validate_and_build_or_raise_config_error(case):
    model, expect_valid = case
    chunks = [lv.get("chunk") if isinstance(lv, dict) else None for lv in model["levels"]] \
        if isinstance(model["levels"], list) else []
    seq_len = 2
    for c in chunks:
        seq_len *= c if isinstance(c, int) and c > 0 else 1
    overrides = [f"model.{key}={json.dumps(value)}" for key, value in model.items()]
    overrides.append(f"data.seq_len={seq_len}")
    try:
        cfg = load_config(overrides=overrides)
    except ConfigError as e:
        assert "\n" not in str(e)
        assert not expect_valid, f"a valid config was rejected: {e}"
        event("ConfigError")
        return
    event("valid")
    assert isinstance(cfg.model, ModelConfig)
    n = analysis.count_params(cfg.model)
    assert isinstance(n, int) and n > 0


# ----------------------------------------------------------------------------- claims the code makes

def test_pallas_attention_refuses_a_shape_the_kernels_cannot_take_at_config_time():
    """model.attention_impl=pallas with a head dim no decode kernel takes fails when the config loads,
    with the kernels' own reason, not later inside a compile."""
    with pytest.raises(ConfigError, match=r"attention_impl=pallas: the decode kernels cannot take .*head dim 320"):
        load_config(overrides=["model.attention_impl=pallas", "model.width=640", "model.num_heads=2"])
    assert load_config(overrides=["model.attention_impl=pallas", "model.width=512", "model.num_heads=8"])


def test_unknown_override_names_the_nearest_keys():
    with pytest.raises(ConfigError) as info:
        load_config(overrides=["model.widht=256"])
    message = str(info.value)
    assert "unknown key config.model.widht" in message and "did you mean config.model.width" in message
    with pytest.raises(ConfigError, match=r"did you mean config\.train\.learning_rate"):
        load_config(overrides=["train.learning_rat=0.1"])
