"""Corpus inputs: every format, directory, glob and list gives exactly the tokens of the same text as plain
JSONL; cut files keep absolute line numbers; bad inputs are one line, exit 2, and leave nothing behind."""

import gzip
import json
import shutil

import numpy as np
import pytest

from photon_jax.config import DataConfig
from photon_jax.data.preparation.formats import iter_documents
from photon_jax.data.preparation.prepare import prepare
from photon_jax.errors import UserError
from photon_jax.tokenizers.tokenizer import train_tokenizer

WORDS = "the of and to a in that is was he for it with as his on be at by I had not are but from".split()


def make_docs(n=40, seed=0):
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        lines = [" ".join(rng.choice(WORDS, size=rng.integers(2, 14))) for _ in range(rng.integers(1, 12))]
        docs.append("\n".join(lines) + ("\n" if i % 3 else " été ☃ 東京\r\n"))
    return docs


def jsonl_lines(docs, field="text", blank_every=5):
    out = []
    for i, doc in enumerate(docs):
        out.append(json.dumps({"id": i, field: doc, "meta": {"n": i}}) + "\n")
        if i % blank_every == 0:
            out.append("\n")  # blank lines are skipped but counted in line numbers
    return "".join(out)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    docs = make_docs()
    text = jsonl_lines(docs)
    (root / "plain.jsonl").write_text(text)
    tok = train_tokenizer(docs, root / "tok.model", 300)
    reference = prepare(DataConfig(corpus=str(root / "plain.jsonl"), tokenizer=tok.path, validation_fraction=0.2),
                        root / "reference", 0)
    return root, docs, text, tok.path, reference


def _tokens(data_dir):
    """Shard bytes of each unit, concatenated, plus the split index files."""
    manifest = json.loads((data_dir / "manifest.json").read_text())
    shards = b"".join((data_dir / s).read_bytes() for s in manifest["shards"])
    splits = {s: ((data_dir / s / "records.npy").read_bytes(), (data_dir / s / "lengths.npy").read_bytes())
              for s in ("train", "validation")}
    return shards, splits


def _records(data_dir, split):
    from photon_jax.data.loading.packing import SplitSource

    source = SplitSource(data_dir, split)
    return [source.doc(i).tobytes() for i in range(len(source))]


def _write_parquet(path, docs, row_group_size=None, field="text"):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"id": list(range(len(docs))), field: docs})
    pq.write_table(table, path, row_group_size=row_group_size)


def test_every_format_gives_the_plain_jsonl_tokens(corpus, tmp_path):
    import datasets
    import zstandard

    root, docs, text, tok, reference = corpus
    (tmp_path / "c.jsonl.gz").write_bytes(gzip.compress(text.encode(), mtime=0))
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(text.encode()))
    _write_parquet(tmp_path / "c.parquet", docs)
    datasets.Dataset.from_dict({"text": docs, "id": list(range(len(docs)))}).save_to_disk(str(tmp_path / "hf"))
    parts = tmp_path / "parts"
    (parts / "sub").mkdir(parents=True)
    for name, chunk in (("a.jsonl", docs[:13]), ("b.jsonl.gz", docs[13:29]), ("sub/c.parquet", docs[29:])):
        if name.endswith(".gz"):
            (parts / name).write_bytes(gzip.compress(jsonl_lines(chunk).encode()))
        elif name.endswith(".parquet"):
            _write_parquet(parts / name, chunk)
        else:
            (parts / name).write_text(jsonl_lines(chunk))
    (parts / "README.md").write_text("not a corpus file")
    corpora = {"gz": "c.jsonl.gz", "zst": "c.jsonl.zst", "parquet": "c.parquet", "datasets": "hf", "dir": "parts",
               "glob": "parts/**/*.*", "list": "parts/a.jsonl,parts/b.jsonl.gz,parts/sub/c.parquet"}
    want = _tokens(root / "reference")
    for label, spec in corpora.items():
        spec = ",".join(str(tmp_path / s) for s in spec.split(","))
        out = tmp_path / f"out-{label}"
        manifest = prepare(DataConfig(corpus=spec, tokenizer=tok, validation_fraction=0.2), out, 0)
        assert manifest["documents"] == len(docs), label
        if label in ("gz", "zst", "parquet", "datasets"):  # one file, one unit: byte-identical shards
            assert _tokens(out) == want, label
        else:  # several files, one unit per file group: the same documents in the same order and split
            assert _tokens(out)[1] == want[1], label
            for split in ("train", "validation"):
                assert _records(out, split) == _records(root / "reference", split), (label, split)
        assert manifest["splits"] == reference["splits"], label


def test_cut_files_keep_absolute_line_numbers_and_equal_tokens(corpus, tmp_path):
    root, docs, text, tok, reference = corpus
    (tmp_path / "many.parquet").unlink(missing_ok=True)
    _write_parquet(tmp_path / "many.parquet", docs, row_group_size=4)
    for spec, unit_bytes in ((root / "plain.jsonl", 700), (tmp_path / "many.parquet", 900)):
        out = tmp_path / f"cut-{spec.suffix[1:]}"
        manifest = prepare(DataConfig(corpus=str(spec), tokenizer=tok, validation_fraction=0.2), out, 0,
                           unit_bytes=unit_bytes, workers=1)
        assert manifest["units"] >= 5, manifest["units"]
        for split in ("train", "validation"):
            assert _records(out, split) == _records(root / "reference", split), (spec, split)
            names = (out / split / "documents.txt").read_text()
            if spec.suffix == ".jsonl":  # line numbers are absolute although each unit counted from its start
                assert names == (root / "reference" / split / "documents.txt").read_text()
    whole = [d.name for d in iter_documents(str(root / "plain.jsonl"))]
    assert whole[:3] == ["plain.jsonl:1", "plain.jsonl:3", "plain.jsonl:4"]  # line 2 is blank


def test_text_field(corpus, tmp_path):
    root, docs, text, tok, reference = corpus
    (tmp_path / "c.jsonl").write_text(jsonl_lines(docs, field="content"))
    out = tmp_path / "out"
    prepare(DataConfig(corpus=str(tmp_path / "c.jsonl"), tokenizer=tok, validation_fraction=0.2,
                       text_field="content"), out, 0)
    assert _tokens(out) == _tokens(root / "reference")
    with pytest.raises(UserError, match=r'c.jsonl line 1 has no "text" string field'):
        prepare(DataConfig(corpus=str(tmp_path / "c.jsonl"), tokenizer=tok), tmp_path / "out2", 0)


def _bad_corpora(tmp_path, text):
    import zstandard

    good = zstandard.ZstdCompressor().compress(text.encode())
    (tmp_path / "bad.jsonl.zst").write_bytes(good[:len(good) // 2] + b"\x00garbage" * 50)
    (tmp_path / "bad.jsonl.gz").write_bytes(gzip.compress(text.encode())[:-40] + b"xx")
    _write_parquet(tmp_path / "notext.parquet", ["a", "b"], field="body")
    (tmp_path / "fake.parquet").write_text("not parquet")
    (tmp_path / "list.jsonl").write_text('{"text": "fine"}\n[1, 2]\n')
    lines = text.splitlines(keepends=True)
    (tmp_path / "late.jsonl").write_text("".join(lines[:40]) + "{broken\n" + "".join(lines[40:]))
    return [
        (str(tmp_path / "nothing-*.jsonl"), "matches no files", {}),
        (str(tmp_path / "bad.jsonl.zst"), "bad.jsonl.zst is not a valid zstd stream", {}),
        (str(tmp_path / "bad.jsonl.gz"), "bad.jsonl.gz is not a valid gzip stream", {}),
        (str(tmp_path / "notext.parquet"), 'notext.parquet has no "text" column \\(columns: id, body\\)', {}),
        (str(tmp_path / "fake.parquet"), "fake.parquet is not a readable parquet file", {}),
        (str(tmp_path / "list.jsonl"), "list.jsonl line 2 is not a JSON object", {}),
        # a bad line in a later work unit still names its line in the whole file
        (str(tmp_path / "late.jsonl"), "late.jsonl line 41 is not valid JSON", {"--unit-mb": "0.0005"}),
    ]


def test_bad_corpus_inputs_are_one_line_and_leave_nothing(corpus, tmp_path, capsys):
    from photon_jax.cli.main import main

    root, docs, text, tok, reference = corpus
    inputs = tmp_path / "in"
    inputs.mkdir()
    outs = tmp_path / "outs"
    outs.mkdir()
    for spec, message, extra in _bad_corpora(inputs, text):
        argv = ["prepare", "--corpus", spec, "--tokenizer", tok, "--vocab-size", "0", "--out", str(outs / "data"),
                "--workers", "1"] + [x for kv in extra.items() for x in kv]
        assert main(argv) == 2, spec
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("photon-jax: error:"), err
        import re

        assert re.search(message, err), (message, err)
        assert list(outs.iterdir()) == [], (spec, list(outs.iterdir()))  # no data dir, no partial dir
    shutil.rmtree(outs)


def test_two_files_with_one_name_keep_their_own_line_numbers(corpus, tmp_path):
    root, docs, text, tok, reference = corpus
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "data.jsonl").write_text(jsonl_lines(docs[:10], blank_every=100))
    spec = f"{tmp_path / 'a' / 'data.jsonl'},{tmp_path / 'b' / 'data.jsonl'}"
    manifest = prepare(DataConfig(corpus=spec, tokenizer=tok, validation_fraction=0.0), tmp_path / "out", 0,
                       unit_bytes=300, workers=1)
    assert manifest["units"] > 4
    names = (tmp_path / "out" / "train" / "documents.txt").read_text().split("\n")[:-1]
    lines = [1] + list(range(3, 12))  # line 2 is blank
    assert names == [f"{tmp_path / sub / 'data.jsonl'}:{line}" for sub in ("a", "b") for line in lines]
    with pytest.raises(UserError, match="names .*data.jsonl twice"):
        prepare(DataConfig(corpus=f"{spec},{tmp_path / 'a' / 'data.jsonl'}", tokenizer=tok), tmp_path / "o2", 0)
