"""Tokenizing one work unit into its own directory (runs in a worker process).

<partial>/units/<NNNNN>/ holds, for the unit's documents in corpus order:

    tokens.array_record   one record per document: token ids + EOS, little-endian uint16 or int32
    lengths.npy           int64 tokens per record (EOS included)
    utf8_bytes.npy        int64 UTF-8 bytes per document
    names.txt             one document name per line
    meta.json             counts, hashes, byte-accounting check; written last

The directory is built under a temporary name and renamed into place, so a unit
either exists complete or not at all: a prepare killed at any point redoes only the
units that had not been renamed yet. Memory: one encoding batch (a few MB of text)
plus the unit's per-document lengths, never the unit's text or tokens.
"""

from __future__ import annotations

import array
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from photon_jax.data.preparation.corpus import JSONL, Document
from photon_jax.data.preparation.formats import count_newlines, read_piece
from photon_jax.data.preparation.units import Unit
from photon_jax.tokenizers.tokenizer import load_tokenizer

META_FILE = "meta.json"


class UnitsDirGone(Exception):
    """The units dir is gone: another prepare of the same inputs installed the partial dir as the data."""
SHARD_FILE = "tokens.array_record"
_ENCODE_BATCH_CHARS = 4 << 20
_ENCODE_BATCH_DOCUMENTS = 8192  # with tiny documents, their objects would outweigh their characters
_TOKENIZERS: dict[str, object] = {}


def unit_dir(units_root: Path, unit: Unit) -> Path:
    return units_root / unit.name


def is_done(units_root: Path, unit: Unit) -> bool:
    return (unit_dir(units_root, unit) / META_FILE).is_file()


def read_meta(units_root: Path, unit: Unit) -> dict:
    return json.loads((unit_dir(units_root, unit) / META_FILE).read_text())


def _tokenizer(path: str):
    """One loaded tokenizer per worker process (the byte-length table is built once, too)."""
    if path not in _TOKENIZERS:
        tok = load_tokenizer(path)
        _TOKENIZERS[path] = (tok, np.asarray(tok.byte_lengths(), np.int64))
    return _TOKENIZERS[path]


def _batches(docs: Iterable[Document]) -> Iterator[list[Document]]:
    batch, chars = [], 0
    for doc in docs:
        batch.append(doc)
        chars += len(doc.text)
        if chars >= _ENCODE_BATCH_CHARS or len(batch) >= _ENCODE_BATCH_DOCUMENTS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def unit_documents(unit: Unit, text_field: str) -> Iterator[Document]:
    for piece in unit.pieces:
        yield from read_piece(piece, text_field)


def write_documents(docs: Iterable[Document], out: Path, tokenizer_path: str, dtype: str, *,
                    cut_file: str = "", continues: bool = False, lines: int = 0, threads: int = 1) -> dict:
    """Tokenize `docs` into the unit directory `out` (created under a temporary name, renamed last)."""
    from array_record.python.array_record_module import ArrayRecordWriter

    tok, byte_table = _tokenizer(tokenizer_path)
    token_dtype = np.dtype(dtype).newbyteorder("<")
    tmp = out.parent / f".tmp-{out.name}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()  # not parents=True: a units dir that vanished (installed by another prepare) stays gone
    except FileNotFoundError:
        raise UnitsDirGone(str(out.parent)) from None
    try:
        lengths, utf8 = array.array("q"), array.array("q")
        token_digest, text_digest = hashlib.sha256(), hashlib.sha256()
        mismatched = 0
        writer = ArrayRecordWriter(str(tmp / SHARD_FILE), "group_size:1")
        with open(tmp / "names.txt", "w", encoding="utf-8") as names:
            for batch in _batches(docs):
                encoded = tok.encode([d.text for d in batch], threads=threads)
                for doc, ids in zip(batch, encoded):
                    ids = np.asarray(ids, np.int64)
                    data_bytes = doc.text.encode("utf-8")
                    mismatched += int(byte_table[ids].sum() != len(data_bytes))
                    data = np.append(ids, tok.eos_id).astype(token_dtype).tobytes()
                    writer.write(data)
                    token_digest.update(data)
                    text_digest.update(data_bytes + b"\0")
                    lengths.append(len(ids) + 1)
                    utf8.append(len(data_bytes))
                    names.write(doc.name + "\n")
        writer.close()
        if not lengths:
            (tmp / SHARD_FILE).unlink()
        np.save(tmp / "lengths.npy", np.frombuffer(lengths, np.int64) if lengths else np.zeros(0, np.int64))
        np.save(tmp / "utf8_bytes.npy", np.frombuffer(utf8, np.int64) if utf8 else np.zeros(0, np.int64))
        meta = {"documents": len(lengths), "tokens": int(sum(lengths)), "utf8_bytes": int(sum(utf8)),
                "token_sha256": token_digest.hexdigest(), "text_sha256": text_digest.hexdigest(),
                "byte_mismatch_documents": mismatched, "shard": SHARD_FILE if lengths else None,
                "cut_file": cut_file, "continues": continues, "lines": lines}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
        try:
            os.rename(tmp, out)
        except OSError:
            if not (out / META_FILE).is_file():  # another process finished this unit first: theirs is equal
                raise
        return meta
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def peak_rss_mib() -> float | None:
    """This process's peak resident memory since it started (VmHWM; Linux). Unlike getrusage's ru_maxrss
    it does not include the memory of the process that forked this one before its exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def tokenize_unit(unit: Unit, units_root: str, tokenizer_path: str, dtype: str, text_field: str,
                  threads: int = 1) -> tuple[int, dict, float | None]:
    """Worker entry point: (unit index, its meta, the worker's peak RSS in MiB). A unit already done is
    not redone."""
    root = Path(units_root)
    if is_done(root, unit):
        return unit.index, read_meta(root, unit), peak_rss_mib()
    docs = unit_documents(unit, text_field)
    cut_file, lines = "", 0
    piece = unit.pieces[-1]  # a part of a cut file is the last (or only) piece of its unit
    if piece.file.fmt == JSONL and (piece.start > 0 or 0 <= piece.stop < piece.file.size):
        # a cut JSONL file: record how many lines this part holds, so the merge can offset later parts
        # (one extra sequential read of the part: cheap next to tokenizing it)
        cut_file, lines = piece.file.rel, count_newlines(piece.file.path, piece.start, piece.stop)
    meta = write_documents(docs, unit_dir(root, unit), tokenizer_path, dtype, cut_file=cut_file,
                           continues=piece.continues, lines=lines, threads=threads)
    return unit.index, meta, peak_rss_mib()
