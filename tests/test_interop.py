"""Hugging Face interchange: import a LLaMA checkpoint made by transformers (tests/data/hf_llama_tiny,
made by scripts/make_hf_llama_fixture.py, with transformers' own logits), export it back tensor for
tensor, round-trip every family bit for bit, and start training from an imported run."""

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import prepare_few_plays

from photon_jax.cli.main import main
from photon_jax.config import load_config
from photon_jax.data.preparation.corpus import shakespeare_files
from photon_jax.interop.safetensors_io import INDEX, TensorReader
from photon_jax.model import build_model
from photon_jax.runs.workdir import load_run
from photon_jax.sharding import strip_boxes
from photon_jax.train.loop import train

pytestmark = pytest.mark.usefixtures("fast_compile")
FIXTURE = Path(__file__).resolve().parent / "data" / "hf_llama_tiny"
VOCAB = 384


def _cli(*args) -> int:
    return main([*args])


def _host_params(workdir) -> dict:
    return jax.tree.map(np.asarray, jax.device_get(strip_boxes(load_run(workdir).params)))


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    out = tmp_path_factory.mktemp("interop") / "llama"
    assert _cli("import", "--hf", str(FIXTURE), "--out", str(out), "data.seq_len=64") == 0
    return out


def test_import_gives_the_logits_transformers_computed(imported, capsys):
    reference = np.load(FIXTURE / "reference.npz")
    run = load_run(imported)
    assert run.cfg.model.family == "vanilla" and run.cfg.model.kv_heads == 2 and run.step == 0
    logits, _ = build_model(run.cfg.model).apply({"params": run.params}, jnp.asarray(reference["tokens"]))
    np.testing.assert_allclose(np.asarray(logits), reference["logits"], atol=1e-4, rtol=0)
    # the imported run is a run: eval and generate take it
    assert _cli("eval", "--workdir", str(imported), "--max-batches", "1", "--batch-size", "8") == 0
    assert _cli("generate", "--workdir", str(imported), "--prompt", "KING.", "--max-new-tokens", "4") == 0


def test_export_reproduces_the_checkpoint_tensors(imported, tmp_path):
    out = tmp_path / "exported"
    assert _cli("export", "--workdir", str(imported), "--out", str(out), "--max-shard-mb", "0.1") == 0
    assert (out / INDEX).is_file() and len(list(out.glob("model-*.safetensors"))) > 1  # sharded, lazily read
    ours, theirs = TensorReader(out), TensorReader(FIXTURE)
    assert sorted(ours.names()) == sorted(theirs.names())
    for name in theirs.names():
        a, b = ours.get(name), theirs.get(name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    config, source = json.loads((out / "config.json").read_text()), json.loads((FIXTURE / "config.json").read_text())
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "rms_norm_eps", "tie_word_embeddings", "model_type"):
        assert config[key] == source[key], key
    assert (out / "tokenizer.model").read_bytes() == (FIXTURE / "tokenizer.model").read_bytes()


def test_export_takes_the_same_overrides_as_eval(imported, tmp_path, capsys):
    """key=value after the options, applied to the run's saved config: here the run's data dir moved
    (its tokenizer is read from there) and the exported context is shorter."""
    run = tmp_path / "run"
    shutil.copytree(imported, run)
    (run / "data").rename(tmp_path / "moved")
    out = tmp_path / "hf"
    assert _cli("export", "--workdir", str(run), "--out", str(out)) == 2
    assert "has no manifest.json" in capsys.readouterr().err
    assert _cli("export", "--workdir", str(run), "--out", str(out), f"data.data_dir={tmp_path / 'moved'}",
                "data.seq_len=32") == 0
    config = json.loads((out / "config.json").read_text())
    assert config["max_position_embeddings"] == 32 and config["photon_jax_config"]["data"]["seq_len"] == 32
    assert (out / "tokenizer.model").read_bytes() == (FIXTURE / "tokenizer.model").read_bytes()


EDGE_CASES = ["  two leading spaces", "runs    of     spaces", "trailing spaces   ", "\tTab\t\tand tabs\t",
              "\n\nleading newlines", "\n", " ", "   ", "a\r\nb", "mixed \t \n \t whitespace",
              "Ünïcödé — naïve café", "日本語のテキスト", "emoji 🙂🚀 and ZWJ 👩‍💻", "digits 1234567890 3.14",
              "<s> </s> <pad> <unk> look like specials", "\x00 control \x07 bytes \x7f"]


def test_export_writes_a_tokenizer_json_that_gives_the_runs_ids(imported, tmp_path):
    """Readers of tokenizer.json alone (`tokenizers`, transformers' AutoTokenizer; vLLM reads the same file)
    get the run's SentencePiece ids and text back, on the run's held-out split and on edge cases."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    out = tmp_path / "hf"
    assert _cli("export", "--workdir", str(imported), "--out", str(out)) == 0
    run = load_run(imported)
    names = (run.data_dir / "validation" / "documents.txt").read_text().split("\n")[:-1]
    plays = {p.name: p for p in shakespeare_files()}
    held_out = [plays[name].read_text(encoding="utf-8").replace("\r\n", "\n").lstrip("\ufeff") for name in names]
    assert held_out and sum(map(len, held_out)) > 100_000
    fast, auto = Tokenizer.from_file(str(out / "tokenizer.json")), AutoTokenizer.from_pretrained(str(out))
    assert (auto.eos_token_id, auto.pad_token_id, auto.bos_token_id) == (
        run.tokenizer.eos_id, run.tokenizer.pad_id, run.tokenizer.bos_id)
    for text in held_out + EDGE_CASES:
        ids = run.tokenizer.encode(text)
        assert fast.encode(text, add_special_tokens=False).ids == ids, text[:80]
        assert auto(text)["input_ids"] == ids, text[:80]
        assert fast.decode(ids, skip_special_tokens=False) == auto.decode(ids) == run.tokenizer.decode(ids), text[:80]
    assert all(run.tokenizer.decode(run.tokenizer.encode(t)) == t for t in EDGE_CASES)  # lossless, so exact text


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    return prepare_few_plays(tmp_path_factory.mktemp("interop_data"), VOCAB, plays=2)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["photon-tiny", "block-tiny", "vanilla-tiny"])
def test_export_import_round_trips_every_family_bit_for_bit(small_data, preset, tmp_path):
    cfg = load_config(preset=preset, overrides=[
        f"data.data_dir={small_data}", f"model.vocab_size={VOCAB}", "model.dtype=float32", "data.seq_len=32",
        "model.width=32", "model.ffn_width=64",
        "train.batch_size=8", "train.steps=1", "train.eval_batches=1"])
    train(cfg, tmp_path / "run", quiet=True)
    assert _cli("export", "--workdir", str(tmp_path / "run"), "--out", str(tmp_path / "hf")) == 0
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_type"] == ("llama" if preset.startswith("vanilla") else "photon-jax")
    assert _cli("import", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "back"),
                f"data.corpus={small_data.parent / 'plays'}") == 0
    before, after = _host_params(tmp_path / "run"), _host_params(tmp_path / "back")
    assert jax.tree.structure(before) == jax.tree.structure(after)
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert load_run(tmp_path / "back").cfg.model == load_run(tmp_path / "run").cfg.model


def test_training_starts_from_an_imported_run(imported, tmp_path):
    """train.init_from: the first update runs at learning rate 0 (warm-up), so after one step the
    checkpoint holds exactly the imported params."""
    cfg = load_config(path=str(imported / "config.json"), overrides=[
        f"data.data_dir={imported / 'data'}", f"train.init_from={imported}", "train.steps=1", "train.batch_size=8",
        "train.eval_batches=1", "train.warmup_steps=5"])
    train(cfg, tmp_path / "tuned", quiet=True)
    source, tuned = _host_params(imported), _host_params(tmp_path / "tuned")
    for a, b in zip(jax.tree.leaves(source), jax.tree.leaves(tuned)):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("case", ["no config", "rope scaling", "missing shard", "bad shape", "not empty",
                                  "export not empty", "init_from elsewhere", "export override changes params",
                                  "export unknown key"])
def test_bad_interop_inputs_are_one_line_exit_2(imported, case, tmp_path, capsys):
    hf = tmp_path / "hf"
    shutil.copytree(FIXTURE, hf)
    config = json.loads((hf / "config.json").read_text())
    args = ["import", "--hf", str(hf), "--out", str(tmp_path / "out")]
    if case == "no config":
        (hf / "config.json").unlink()
        expect = "has no readable config.json"
    elif case == "rope scaling":
        (hf / "config.json").write_text(json.dumps(dict(config, rope_scaling={"type": "linear", "factor": 2.0})))
        expect = "rope_scaling"
    elif case == "missing shard":
        next(hf.glob("model-00002-*.safetensors")).unlink()
        expect = "does not exist"
    elif case == "bad shape":
        (hf / "config.json").write_text(json.dumps(dict(config, intermediate_size=64)))
        expect = "stack.layers.mlp.down.kernel has shape (2, 96, 48), the model needs (2, 64, 48)"
    elif case == "not empty":
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "keep.txt").write_text("mine")
        expect = "already exists and is not empty"
    elif case == "export not empty":
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "keep.txt").write_text("mine")
        args = ["export", "--workdir", str(imported), "--out", str(tmp_path / "out")]
        expect = "already exists and is not empty"
    elif case == "export override changes params":
        args = ["export", "--workdir", str(imported), "--out", str(tmp_path / "out"), "model.width=64"]
        expect = "an override changes the parameters of the checkpoint's model"
    elif case == "export unknown key":
        args = ["export", "--workdir", str(imported), "--out", str(tmp_path / "out"), "data.seq_lem=32"]
        expect = "unknown key config.data.seq_lem (did you mean config.data.seq_len"
    else:
        args = ["train", "--preset", "vanilla-tiny", "--workdir", str(tmp_path / "run"),
                f"data.data_dir={imported / 'data'}", f"model.vocab_size={VOCAB}",
                f"train.init_from={tmp_path / 'nowhere'}"]
        expect = "no checkpoints there"
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expect in err[0], err
    if case in ("not empty", "export not empty"):
        assert (tmp_path / "out" / "keep.txt").read_text() == "mine"  # nothing already written is lost
    assert not list(tmp_path.glob(".out.tmp-*"))  # no half-written directory left behind
