"""`prepare`: corpus -> tokenizer -> token shards + manifest, once.

Layout of a prepared data dir::

    manifest.json            format, fingerprint of the inputs, vocab/EOS/pad ids, split stats
    tokenizer.model          the SentencePiece model (trained here or copied from data.tokenizer)
    train/shard-00000.array_record ...   one record per document: its token ids + EOS,
    validation/...                       little-endian uint16 (vocab <= 65536) else int32
    <split>/lengths.npy      int64 tokens per record (EOS included), for packing without reads
    <split>/documents.txt    one document name per record

The split is by document: a seeded permutation of the document indices picks
round(validation_fraction * n) validation documents (at least one in each split
when n >= 2 and the fraction is > 0). A corpus of a single document is cut at the
line break nearest to (1 - fraction) of its length into a train part and a
validation part instead, so a lone text file still gets a validation split.

Idempotent: the manifest stores a fingerprint of the inputs (corpus content hash,
tokenizer settings or file hash, validation fraction, seed, format version); a
second call with the same inputs returns the existing manifest untouched. Other
inputs for an existing dir are refused unless overwrite=True. Everything is
written into a temporary sibling dir that is renamed into place at the end, so a
crash never leaves a half-written dir behind a valid-looking manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np

from photon_jax.config import DataConfig
from photon_jax.data.corpus import Document, corpus_fingerprint, iter_documents
from photon_jax.data.tokenizer import MODEL_TYPE, TRAINER_VERSION, check_vocab, load_tokenizer, train_tokenizer
from photon_jax.errors import UserError

FORMAT = "photon-jax-prepared-data"
FORMAT_VERSION = 1
SPLITS = ("train", "validation")
TOKENIZER_FILE = "tokenizer.model"
MANIFEST_FILE = "manifest.json"
DEFAULT_SHARD_BYTES = 128 << 20
_ENCODE_BATCH_CHARS = 8 << 20


def load_manifest(data_dir: str | Path) -> dict:
    path = Path(data_dir).expanduser() / MANIFEST_FILE
    if not path.is_file():
        raise UserError(f"data dir {Path(data_dir)} has no {MANIFEST_FILE}; run photon-jax prepare")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is unreadable or corrupt ({type(e).__name__}); run photon-jax prepare --force") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"{path} is not a photon-jax data manifest; run photon-jax prepare --force")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path} has format version {manifest.get('format_version')}, this code reads "
                        f"{FORMAT_VERSION}; run photon-jax prepare --force")
    return manifest


def _inputs(data_cfg: DataConfig, vocab_size: int) -> dict:
    if data_cfg.tokenizer:
        tok = load_tokenizer(data_cfg.tokenizer)
        if vocab_size:
            check_vocab(tok, vocab_size, what="the requested vocab size")
        tokenizer = {"file_sha256": tok.sha256}
    else:
        if vocab_size <= 0:
            raise UserError(f"vocab size must be > 0 to train a tokenizer, got {vocab_size}")
        tokenizer = {"train": MODEL_TYPE, "vocab_size": vocab_size, "trainer_version": TRAINER_VERSION}
    return {"format_version": FORMAT_VERSION, "corpus": corpus_fingerprint(data_cfg.corpus), "tokenizer": tokenizer,
            "validation_fraction": data_cfg.validation_fraction, "seed": data_cfg.seed}


def _complete(out: Path, manifest: dict) -> bool:
    files = [TOKENIZER_FILE] + [f for s in manifest.get("splits", {}).values()
                                for f in s.get("shards", []) + [s.get("lengths", "")]]
    return all(f and (out / f).is_file() for f in files)


def _reusable(out: Path, fingerprint: str) -> dict | None:
    """The complete manifest already in `out` for the same inputs, else None."""
    try:
        existing = load_manifest(out)
    except UserError:
        return None
    if existing.get("fingerprint") == fingerprint and _complete(out, existing):
        return existing
    return None


def prepare(data_cfg: DataConfig, out_dir: str | Path, vocab_size: int, *, overwrite: bool = False,
            shard_bytes: int = DEFAULT_SHARD_BYTES) -> dict:
    """Prepare `data_cfg.corpus` into `out_dir`; returns the manifest plus "reused" and "seconds".

    vocab_size: size of the tokenizer to train (data_cfg.tokenizer == ""), or the size a given
    tokenizer must have (0 = accept any).
    """
    start = time.time()
    out = Path(out_dir).expanduser().absolute()
    inputs = _inputs(data_cfg, vocab_size)
    fingerprint = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    if (out / MANIFEST_FILE).exists():
        existing = _reusable(out, fingerprint)
        if existing:
            return {**existing, "reused": True, "seconds": time.time() - start}
        if not overwrite:
            raise UserError(f"{out} already holds prepared data for other inputs (or is incomplete); "
                            "use --force to replace it or choose another --out")
    elif out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not a prepared data dir; use --force to replace it or choose another --out")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # e.g. a parent of --out is a file
        raise UserError(f"cannot create {out.parent}: {e.strerror or e}") from None
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        tmp.mkdir()
        manifest = _build(tmp, data_cfg, vocab_size, shard_bytes)
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "fingerprint": fingerprint,
                    "inputs": inputs, **manifest}
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        try:
            _install(tmp, out, replace=overwrite)
        except OSError as e:  # e.g. another process installed the same data first
            existing = _reusable(out, fingerprint)
            if existing:
                return {**existing, "reused": True, "seconds": time.time() - start}
            raise UserError(f"cannot move prepared data into {out}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {**manifest, "reused": False, "seconds": time.time() - start}


def _install(tmp: Path, out: Path, replace: bool) -> None:
    """Rename tmp to out (atomic; fails if another process got there first). With `replace`,
    an existing out is moved aside first and deleted after."""
    if not replace or not out.exists() or (out.is_dir() and not any(out.iterdir())):
        os.rename(tmp, out)  # replaces at most an empty dir; ENOTEMPTY / ENOTDIR otherwise
        return
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:12]}"
    os.rename(out, old)
    os.rename(tmp, out)
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink()


# ----------------------------------------------------------------------------- building


def _cut_single(doc: Document, fraction: float) -> list[Document]:
    """Cut a lone document at the line break (else space) nearest to (1 - fraction) of its length."""
    text = doc.text
    target = int(round(len(text) * (1.0 - fraction)))
    for sep in ("\n", " "):
        left, right = text.rfind(sep, 0, target), text.find(sep, target)
        candidates = [i + 1 for i in (left, right) if i >= 0]
        if candidates:
            cut = min(candidates, key=lambda i: abs(i - target))
            break
    else:
        cut = target
    head, tail = text[:cut], text[cut:]
    if not head.strip() or not tail.strip():
        return [doc]
    return [Document(doc.name + "#train", head), Document(doc.name + "#validation", tail)]


def _documents(corpus: str, fraction: float) -> tuple[int, callable, np.ndarray | None]:
    """(count, factory of a fresh document iterator, forced split or None) after the single-document cut."""
    count = 0
    first = None
    for doc in iter_documents(corpus):  # a full pass also surfaces every decoding error up front
        count += 1
        first = first or doc
    if count == 0:
        raise UserError(f"corpus {corpus} has no text (every document is empty or whitespace)")
    if count == 1 and fraction > 0:
        parts = _cut_single(first, fraction)
        return len(parts), lambda: iter(parts), np.array([False, True][:len(parts)])
    return count, lambda: iter_documents(corpus), None


def split_documents(n: int, fraction: float, seed: int) -> np.ndarray:
    """bool[n], True for validation documents: a seeded choice by document index."""
    n_val = 0
    if n >= 2 and fraction > 0:
        n_val = min(n - 1, max(1, int(round(n * fraction))))
    is_val = np.zeros(n, bool)
    is_val[np.random.default_rng([seed % (1 << 64), 0x5EED]).permutation(n)[:n_val]] = True
    return is_val


class _SplitWriter:
    def __init__(self, root: Path, name: str, dtype: np.dtype, shard_bytes: int):
        self.root, self.name, self.dtype, self.shard_bytes = root, name, dtype, shard_bytes
        (root / name).mkdir()
        self.lengths: list[int] = []
        self.names: list[str] = []
        self.shards: list[str] = []
        self.utf8_bytes = 0
        self.digest = hashlib.sha256()
        self._writer = None
        self._shard_size = 0

    def add(self, doc: Document, ids: np.ndarray) -> None:
        from array_record.python.array_record_module import ArrayRecordWriter

        if self._writer is None or self._shard_size >= self.shard_bytes:
            self._close_shard()
            rel = f"{self.name}/shard-{len(self.shards):05d}.array_record"
            self._writer = ArrayRecordWriter(str(self.root / rel), "group_size:1")
            self.shards.append(rel)
        data = ids.astype(self.dtype.newbyteorder("<")).tobytes()
        self._writer.write(data)
        self._shard_size += len(data)
        self.digest.update(data)
        self.lengths.append(len(ids))
        self.names.append(doc.name)
        self.utf8_bytes += len(doc.text.encode("utf-8"))

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self._shard_size = 0

    def finish(self) -> dict:
        self._close_shard()
        lengths = f"{self.name}/lengths.npy"
        np.save(self.root / lengths, np.asarray(self.lengths, np.int64))
        (self.root / self.name / "documents.txt").write_text("".join(n + "\n" for n in self.names))
        return {"documents": len(self.lengths), "tokens": int(sum(self.lengths)), "utf8_bytes": self.utf8_bytes,
                "token_sha256": self.digest.hexdigest(), "shards": self.shards, "lengths": lengths}


def _batches(docs: Iterator[Document]) -> Iterator[list[tuple[int, Document]]]:
    batch, chars = [], 0
    for index, doc in enumerate(docs):
        batch.append((index, doc))
        chars += len(doc.text)
        if chars >= _ENCODE_BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _build(tmp: Path, data_cfg: DataConfig, vocab_size: int, shard_bytes: int) -> dict:
    count, documents, is_val = _documents(data_cfg.corpus, data_cfg.validation_fraction)
    if data_cfg.tokenizer:
        tok = load_tokenizer(data_cfg.tokenizer)
        shutil.copyfile(tok.path, tmp / TOKENIZER_FILE)
        source = str(Path(tok.path).absolute())
    else:
        tok = train_tokenizer((d.text for d in documents()), tmp / TOKENIZER_FILE, vocab_size)
        source = "trained"
    if is_val is None:
        is_val = split_documents(count, data_cfg.validation_fraction, data_cfg.seed)
    dtype = np.dtype(np.uint16 if tok.vocab_size <= 1 << 16 else np.int32)
    writers = {name: _SplitWriter(tmp, name, dtype, shard_bytes) for name in SPLITS}
    for batch in _batches(documents()):
        encoded = tok.encode([doc.text for _, doc in batch])
        for (index, doc), ids in zip(batch, encoded):
            ids = np.append(np.asarray(ids, np.int64), tok.eos_id)
            writers["validation" if is_val[index] else "train"].add(doc, ids)
    splits = {name: w.finish() for name, w in writers.items()}
    return {
        "corpus": data_cfg.corpus,
        "vocab_size": tok.vocab_size, "eos_id": tok.eos_id, "pad_id": tok.pad_id, "token_dtype": dtype.name,
        "tokenizer": {"file": TOKENIZER_FILE, "sha256": tok.sha256, "source": source,
                      "bos_id": tok.bos_id, "model_type": MODEL_TYPE if source == "trained" else "given"},
        "validation_fraction": data_cfg.validation_fraction, "seed": data_cfg.seed,
        "documents": sum(s["documents"] for s in splits.values()),
        "splits": splits,
    }
