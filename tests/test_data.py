"""Data pipeline: corpus reading, tokenizer, prepare (shards + manifest), grain packing, sharding, state."""

import json
import math

import numpy as np
import pytest

from photon_jax.config import DataConfig
from photon_jax.data.loading.packing import SplitSource
from photon_jax.data.loading.pipeline import eval_batches, train_iterator
from photon_jax.data.manifest import load_manifest
from photon_jax.data.preparation.formats import iter_documents
from photon_jax.data.preparation.prepare import prepare, split_documents
from photon_jax.errors import UserError
from photon_jax.tokenizers.tokenizer import check_vocab, load_tokenizer, token_byte_lengths, train_tokenizer

WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly hex "
         "jovial kings and queens of old night time; thou art, hath been! 42 1999").split()


def english_docs(n=10, seed=0):
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n):
        lines = [" ".join(rng.choice(WORDS, size=rng.integers(3, 12))) for _ in range(rng.integers(2, 25))]
        docs.append("\n".join(lines) + "\n")
    return docs


def unique_docs(n=12, seed=0):
    """Documents of distinct CJK characters: with a tokenizer of exactly that many pieces every character
    is one token and every token id (except EOS) occurs once in the whole corpus."""
    lengths = np.random.default_rng(seed).integers(2, 90, size=n)
    lengths[3] = 200  # longer than several windows
    out, start = [], 0x4E00
    for length in lengths:
        out.append("".join(chr(start + i) for i in range(int(length))))
        start += int(length)
    return out


def write_jsonl(path, docs):
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


@pytest.fixture(scope="module")
def unique_data(tmp_path_factory):
    """A prepared dir over `unique_docs` plus, per document, its token ids (EOS appended) in stored order."""
    root = tmp_path_factory.mktemp("unique")
    docs = unique_docs()
    corpus = write_jsonl(root / "corpus.jsonl", docs)
    vocab = 261 + sum(map(len, docs))  # 4 specials + "\n" + 256 bytes + one piece per character
    manifest = prepare(DataConfig(corpus=str(corpus), validation_fraction=0.2, seed=1), root / "data", vocab)
    tok = load_tokenizer(root / "data" / "tokenizer.model")
    ids = [np.array(tok.encode(d) + [tok.eos_id]) for d in docs]
    assert all(len(i) == len(d) + 1 for i, d in zip(ids, docs))
    return root / "data", manifest, ids


def _stored(data_dir, manifest, ids, split):
    names = (data_dir / split / "documents.txt").read_text().split()
    return [ids[int(name.split(":")[1]) - 1] for name in names]  # names are "corpus.jsonl:LINE"


def split_tokens(data_dir, split):
    """Every token of a split's documents, in stored order, as bytes (independent of the shard layout)."""
    source = SplitSource(data_dir, split)
    return b"".join(source.doc(i).tobytes() for i in range(len(source)))


def _take(it, n):
    return [next(it) for _ in range(n)]


def _equal(a, b):
    return all(np.array_equal(x["tokens"], y["tokens"]) and np.array_equal(x["mask"], y["mask"]) for x, y in zip(a, b))


# ----------------------------------------------------------------------------- corpus + tokenizer


def test_corpus_kinds(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "b.txt").write_text("bee\r\nline\n")
    (tmp_path / "d" / "sub" / "a.txt").write_text("ay")
    (tmp_path / "d" / "blank.txt").write_text("  \n")
    (tmp_path / "d" / "skip.md").write_text("not a txt")
    docs = list(iter_documents(str(tmp_path / "d")))
    assert [(d.name, d.text) for d in docs] == [("b.txt", "bee\nline\n"), ("sub/a.txt", "ay")]
    write_jsonl(tmp_path / "c.jsonl", ["one", " ", "two"])
    assert [d.name for d in iter_documents(str(tmp_path / "c.jsonl"))] == ["c.jsonl:1", "c.jsonl:3"]


def test_tokenizer_lossless_and_byte_lengths(tmp_path):
    docs = english_docs() + ["été ☃ 東京\ttabs  and   spaces\n"]
    tok = train_tokenizer(docs, tmp_path / "t.model", 320)
    assert (tok.vocab_size, tok.eos_id, tok.pad_id, tok.bos_id) == (320, 1, 0, 2)
    lengths = token_byte_lengths(tok)
    assert lengths[[0, 1, 2, 3]].tolist() == [0, 0, 0, 0]
    for doc in docs:
        ids = tok.encode(doc)
        assert tok.decode(ids) == doc
        assert lengths[ids].sum() == len(doc.encode("utf-8"))
    again = train_tokenizer(docs, tmp_path / "u.model", 320)
    assert again.sha256 == tok.sha256 == load_tokenizer(tmp_path / "t.model").sha256
    assert check_vocab(tok, 320) == 320
    with pytest.raises(UserError, match="vocab size 320 but the model expects 512"):
        check_vocab(tok, 512)
    with pytest.raises(UserError, match="too small"):
        train_tokenizer(docs, tmp_path / "v.model", 100)


# ----------------------------------------------------------------------------- prepare


def test_prepare_manifest_split_and_determinism(tmp_path, unique_data):
    data_dir, manifest, ids = unique_data
    for key in ("format", "format_version", "fingerprint", "vocab_size", "eos_id", "pad_id", "token_dtype",
                "tokenizer", "splits", "documents"):
        assert key in manifest
    assert "seq_len" not in manifest and manifest["tokenizer"]["file"] == "tokenizer.model"
    train, val = manifest["splits"]["train"], manifest["splits"]["validation"]
    assert (train["documents"], val["documents"]) == (10, 2)  # round(12 * 0.2), split by document
    assert train["tokens"] + val["tokens"] == sum(map(len, ids))
    assert train["utf8_bytes"] + val["utf8_bytes"] == 3 * (sum(map(len, ids)) - len(ids))
    train_docs = set((data_dir / "train" / "documents.txt").read_text().split())
    val_docs = set((data_dir / "validation" / "documents.txt").read_text().split())
    assert not train_docs & val_docs and len(train_docs | val_docs) == 12
    assert load_manifest(data_dir) == {k: v for k, v in manifest.items() if k not in ("reused", "seconds")}

    # same inputs elsewhere, cut into many work units: identical manifest facts and documents
    corpus = data_dir.parent / "corpus.jsonl"
    cfg = DataConfig(corpus=str(corpus), validation_fraction=0.2, seed=1)
    other = prepare(cfg, tmp_path / "again", manifest["vocab_size"], unit_bytes=64)
    assert other["units"] > 4 and len(other["shards"]) > 4 and manifest["units"] == 1
    for key in ("fingerprint", "tokenizer", "vocab_size", "splits", "documents"):
        assert other[key] == manifest[key]
    for split in ("train", "validation"):
        assert split_tokens(tmp_path / "again", split) == split_tokens(data_dir, split)
        assert (tmp_path / "again" / split / "documents.txt").read_text() == \
            (data_dir / split / "documents.txt").read_text()

    # idempotent: nothing rewritten
    stamp = (data_dir / "manifest.json").stat().st_mtime_ns
    assert prepare(cfg, data_dir, manifest["vocab_size"])["reused"]
    assert (data_dir / "manifest.json").stat().st_mtime_ns == stamp
    # other inputs: refused unless overwrite, never destroyed silently
    changed = DataConfig(corpus=str(corpus), validation_fraction=0.2, seed=2)
    with pytest.raises(UserError, match="already holds prepared data"):
        prepare(changed, tmp_path / "again", manifest["vocab_size"])
    replaced = prepare(changed, tmp_path / "again", manifest["vocab_size"], overwrite=True)
    assert replaced["fingerprint"] != manifest["fingerprint"] and not replaced["reused"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"]  # no temp or backup dirs left


def test_split_documents():
    for n, fraction, n_val in ((1, 0.5, 0), (2, 0.01, 1), (2, 0.9, 1), (40, 0.05, 2), (10, 0.0, 0)):
        assert split_documents(n, fraction, 0).sum() == n_val
    assert np.array_equal(split_documents(50, 0.2, 3), split_documents(50, 0.2, 3))
    assert not np.array_equal(split_documents(50, 0.2, 3), split_documents(50, 0.2, 4))


def test_single_text_file_is_cut_for_validation(tmp_path):
    corpus = tmp_path / "book.txt"
    corpus.write_text("".join(english_docs(3)))
    manifest = prepare(DataConfig(corpus=str(corpus), validation_fraction=0.1), tmp_path / "data", 300)
    train, val = manifest["splits"]["train"], manifest["splits"]["validation"]
    assert train["documents"] == val["documents"] == 1
    assert train["utf8_bytes"] + val["utf8_bytes"] == len(corpus.read_bytes())
    assert 0.05 < val["utf8_bytes"] / len(corpus.read_bytes()) < 0.2


def test_shakespeare(tmp_path):
    manifest = prepare(DataConfig(corpus="shakespeare"), tmp_path / "data", 512)
    assert manifest["documents"] == 42 and manifest["splits"]["validation"]["documents"] == 2
    assert manifest["splits"]["train"]["tokens"] > 1_000_000
    tok = load_tokenizer(tmp_path / "data" / "tokenizer.model")
    lengths = token_byte_lengths(tok)
    batch = next(eval_batches(tmp_path / "data", "validation", 64, 4))
    assert batch["tokens"].shape == (4, 64) and batch["mask"].all()
    assert lengths[batch["tokens"]].sum() == len(tok.decode(batch["tokens"].ravel()).encode())


# ----------------------------------------------------------------------------- pipeline


def test_eval_is_the_stored_stream_in_order_with_padding(unique_data):
    data_dir, manifest, ids = unique_data
    for split in ("train", "validation"):
        stream = np.concatenate(_stored(data_dir, manifest, ids, split))
        batches = list(eval_batches(data_dir, split, 16, 3))
        assert len(batches) == math.ceil(math.ceil(len(stream) / 16) / 3)
        tokens = np.concatenate([b["tokens"] for b in batches]).ravel()
        mask = np.concatenate([b["mask"] for b in batches]).ravel()
        assert mask.dtype == np.float32 and tokens.dtype == np.int32
        assert np.array_equal(tokens[mask == 1], stream)
        assert mask[:len(stream)].all() and not mask[len(stream):].any()  # 0 exactly on the padding
        assert (tokens[mask == 0] == manifest["pad_id"]).all()
    assert len(list(eval_batches(data_dir, "train", 16, 3, max_batches=2))) == 2


def test_train_epoch_covers_every_token_once_without_truncation(unique_data):
    data_dir, manifest, ids = unique_data
    docs = _stored(data_dir, manifest, ids, "train")
    where = {int(t): (d, i) for d, doc in enumerate(docs) for i, t in enumerate(doc[:-1])}
    seq_len, batch = 16, 4
    windows_per_epoch = -(-sum(map(len, docs)) // seq_len)
    it = train_iterator(data_dir, seq_len, batch, seed=5)
    rows = [row for b in _take(it, -(-2 * windows_per_epoch // batch)) for row in zip(b["tokens"], b["mask"])]
    for epoch in range(2):
        windows = rows[epoch * windows_per_epoch:(epoch + 1) * windows_per_epoch]
        assert sum(not m.all() for _, m in windows) == 1  # documents are packed: one partial window per epoch
        seen = np.concatenate([t[m == 1] for t, m in windows])
        assert len(seen) == sum(map(len, docs))
        assert (seen == manifest["eos_id"]).sum() == len(docs)
        body = seen[seen != manifest["eos_id"]]
        assert len(set(body.tolist())) == len(body) == len(where)  # every token exactly once
        # contiguity: inside a window, consecutive tokens of a document are consecutive in it and a
        # document's last token is followed by its EOS
        for tokens, mask in windows:
            real = tokens[mask == 1]
            for a, b in zip(real[:-1], real[1:]):
                if a != manifest["eos_id"] and b != manifest["eos_id"]:
                    assert where[int(b)] == (where[int(a)][0], where[int(a)][1] + 1)
                elif a != manifest["eos_id"]:
                    assert where[int(a)][1] == len(docs[where[int(a)][0]]) - 2
                elif b != manifest["eos_id"]:
                    assert where[int(b)][1] == 0
    first = [t.tolist() for t, _ in rows[:windows_per_epoch]]
    second = [t.tolist() for t, _ in rows[windows_per_epoch:2 * windows_per_epoch]]
    assert first != second  # each epoch is reshuffled


def test_same_seed_same_batches(unique_data):
    data_dir = unique_data[0]
    a = _take(train_iterator(data_dir, 16, 4, seed=0), 12)
    b = _take(train_iterator(data_dir, 16, 4, seed=0), 12)
    c = _take(train_iterator(data_dir, 16, 4, seed=1), 12)
    assert _equal(a, b) and not _equal(a, c)
    assert a[0]["tokens"].shape == (4, 16) and a[0]["tokens"].dtype == np.int32 and a[0]["mask"].dtype == np.float32


def test_restored_iterator_continues_exactly(unique_data):
    data_dir = unique_data[0]
    reference = _take(train_iterator(data_dir, 16, 4, seed=7), 30)
    it = train_iterator(data_dir, 16, 4, seed=7)
    _take(it, 11)
    state = json.loads(json.dumps(it.get_state()))
    resumed = train_iterator(data_dir, 16, 4, seed=7)
    resumed.set_state(state)
    assert _equal(_take(resumed, 19), reference[11:])
    # the state is global: a restart on 2 processes continues with the same global batches
    halves = [train_iterator(data_dir, 16, 4, seed=7, process_index=p, process_count=2) for p in range(2)]
    for h in halves:
        h.set_state(state)
    for step in range(11, 20):
        parts = [next(h) for h in halves]
        assert np.array_equal(np.concatenate([p["tokens"] for p in parts]), reference[step]["tokens"])
    with pytest.raises(UserError, match="seed"):
        train_iterator(data_dir, 16, 4, seed=8).set_state(state)


@pytest.mark.parametrize("processes", [2, 3])
def test_process_shards_are_disjoint_and_cover(unique_data, processes):
    data_dir = unique_data[0]
    whole = _take(train_iterator(data_dir, 16, 6, seed=3), 15)
    local = [_take(train_iterator(data_dir, 16, 6, seed=3, process_index=p, process_count=processes), 15)
             for p in range(processes)]
    for step in range(15):
        assert local[0][step]["tokens"].shape == (6 // processes, 16)
        joined = np.concatenate([local[p][step]["tokens"] for p in range(processes)])
        assert np.array_equal(joined, whole[step]["tokens"])
    whole_eval = list(eval_batches(data_dir, "train", 16, 6))
    local_eval = [list(eval_batches(data_dir, "train", 16, 6, process_index=p, process_count=processes))
                  for p in range(processes)]
    assert all(len(batches) == len(whole_eval) for batches in local_eval)
    for step, batch in enumerate(whole_eval):
        assert np.array_equal(np.concatenate([local_eval[p][step]["mask"] for p in range(processes)]), batch["mask"])
    with pytest.raises(UserError, match="not divisible"):
        train_iterator(data_dir, 16, 5, seed=0, process_count=2)


# ----------------------------------------------------------------------------- bad input


def _bad_inputs(tmp_path):
    (tmp_path / "empty.txt").write_text(" \n\t\n")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"text": oops}\n')
    (tmp_path / "notext.jsonl").write_text('{"text": "fine"}\n\n{"body": "x"}\n')
    return [
        (["--corpus", str(tmp_path / "empty.txt")], "has no text"),
        (["--corpus", str(tmp_path / "latin1.txt")], "latin1.txt is not valid UTF-8"),
        (["--corpus", str(tmp_path / "bad.jsonl")], "bad.jsonl line 2 is not valid JSON"),
        (["--corpus", str(tmp_path / "notext.jsonl")], 'notext.jsonl line 3 has no "text"'),
        (["--corpus", str(tmp_path / "missing")], "not found"),
        (["--tokenizer", str(tmp_path / "nope.model")], "tokenizer file .*nope.model not found"),
    ]


def test_bad_input_raises_user_error(tmp_path):
    for argv, message in _bad_inputs(tmp_path):
        corpus = argv[1] if argv[0] == "--corpus" else "shakespeare"
        tokenizer = argv[1] if argv[0] == "--tokenizer" else ""
        with pytest.raises(UserError, match=message):
            prepare(DataConfig(corpus=corpus, tokenizer=tokenizer), tmp_path / "out", 300)
    with pytest.raises(UserError, match="has no manifest.json; run photon-jax prepare"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(UserError, match="corrupt"):
        load_manifest(tmp_path)


def test_wrong_vocab_tokenizer(tmp_path, unique_data):
    data_dir, manifest, _ = unique_data
    corpus = str(data_dir.parent / "corpus.jsonl")
    cfg = DataConfig(corpus=corpus, tokenizer=str(data_dir / "tokenizer.model"))
    with pytest.raises(UserError, match=f"vocab size {manifest['vocab_size']} but the requested vocab size expects 64"):
        prepare(cfg, tmp_path / "out", 64)
    given = prepare(cfg, tmp_path / "out", 0)  # 0: accept the given tokenizer
    assert given["tokenizer"]["sha256"] == manifest["tokenizer"]["sha256"]
    with pytest.raises(UserError, match="expects 2048"):
        check_vocab(load_manifest(tmp_path / "out"), 2048)


def test_cli(tmp_path, capsys):
    from photon_jax.cli.main import main

    for argv, message in _bad_inputs(tmp_path):
        assert main(["prepare", *argv, "--out", str(tmp_path / "out"), "--vocab-size", "300"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("photon-jax: error:"), err
    corpus = write_jsonl(tmp_path / "ok.jsonl", english_docs(6))
    argv = ["prepare", "--corpus", str(corpus), "--out", str(tmp_path / "data"), "--vocab-size", "300",
            "--validation-fraction", "0.3", "--seed", "4"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "prepared" in out and str(tmp_path / "data" / "manifest.json") in out
    manifest = load_manifest(tmp_path / "data")
    assert manifest["vocab_size"] == 300 and manifest["splits"]["validation"]["documents"] == 2
    assert main(argv) == 0 and "reused" in capsys.readouterr().out
    assert main(argv[:-2] + ["--seed", "5"]) == 2 and "--force" in capsys.readouterr().err
    assert main(argv[:-2] + ["--seed", "5", "--force"]) == 0
    assert main(["prepare", "--corpus", str(corpus), "--out", str(tmp_path / "x"), "data.vocab_size=299x"]) == 2


def test_worker_processes_give_the_same_batches(unique_data):
    data_dir = unique_data[0]
    reference = _take(train_iterator(data_dir, 16, 4, seed=2), 8)
    it = train_iterator(data_dir, 16, 4, seed=2, worker_count=2)
    try:
        assert _equal(_take(it, 8), reference)
    finally:
        it.close()


def test_to_global_batch(unique_data):
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from photon_jax.data.loading.pipeline import to_global_batch

    mesh = Mesh(np.array(jax.devices()).reshape(-1), ("data",))
    batch = next(train_iterator(unique_data[0], 16, len(jax.devices()), seed=0))
    arrays = to_global_batch(batch, NamedSharding(mesh, PartitionSpec("data")))
    assert arrays["tokens"].shape == batch["tokens"].shape and arrays["tokens"].dtype == np.int32
    assert len(arrays["mask"].sharding.device_set) == len(jax.devices())
    assert np.array_equal(np.asarray(arrays["tokens"]), batch["tokens"])
