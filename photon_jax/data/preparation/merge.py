"""Merging finished work units into the train/validation splits of a prepared dir.

Nothing is re-tokenized or copied: the units' shards, read in unit order, are the
corpus' documents in order (global record g = document g), and each split is an
index over them:

    <split>/records.npy     int64 global record ids of the split's documents, ascending
    <split>/lengths.npy     int64 tokens per document (EOS included), same order
    <split>/documents.txt   one document name per line, same order

The split is by document: a seeded permutation of the document indices picks
round(validation_fraction * n) validation documents (at least one in each split when
n >= 2 and the fraction is > 0), computed one unit's documents at a time (split.py).
Memory: one unit's metadata at a time, nothing per document of the corpus: the index
files are appended to with plain writes (a memory map's dirty pages would count in the
process's resident memory).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from photon_jax.data.manifest import SPLITS
from photon_jax.data.preparation.split import DocumentSplit
from photon_jax.data.preparation.unit_writer import read_meta, unit_dir
from photon_jax.data.preparation.units import Unit


def split_documents(n: int, fraction: float, seed: int) -> np.ndarray:
    """bool[n], True for validation documents (the whole corpus at once: for tests and small n)."""
    return DocumentSplit(n, fraction, seed).is_validation(0, n)


def _renamed(name: str, offset: int) -> str:
    """The name "file.jsonl:LOCAL" of a document in a later part of a cut file -> its absolute line number."""
    rel, line = name.rsplit(":", 1)
    return f"{rel}:{int(line) + offset}"


def _route_names(path: Path, flags: np.ndarray, offset: int, indexes: dict) -> int:
    """Copy a unit's names (one per line; only "\n" ends a line) to the split indexes' name files, one line
    at a time (not the unit's list of names); returns how many there were."""
    count = 0
    with open(path, encoding="utf-8", newline="\n") as names:
        for count, (flag, line) in enumerate(zip(flags, names), start=1):
            name = line[:-1]
            indexes["validation" if flag else "train"].names.write((_renamed(name, offset) if offset else name) + "\n")
    return count


def _npy_appender(path: Path, count: int):
    """An int64 .npy file of `count` values, opened to append them in order (header written now)."""
    handle = open(path, "wb")
    np.lib.format.write_array_header_1_0(handle, {"descr": np.dtype("<i8").str, "fortran_order": False,
                                                  "shape": (count,)})
    return handle


class _SplitIndex:
    def __init__(self, root: Path, name: str, count: int):
        self.name, self.count, self.filled = name, count, 0
        (root / name).mkdir(exist_ok=True)
        self.records = _npy_appender(root / name / "records.npy", count)
        self.lengths = _npy_appender(root / name / "lengths.npy", count)
        self.names = open(root / name / "documents.txt", "w", encoding="utf-8")
        self.tokens = self.utf8_bytes = 0

    def add(self, records: np.ndarray, lengths: np.ndarray, utf8: np.ndarray) -> None:
        self.filled += len(records)
        self.records.write(np.asarray(records, "<i8").tobytes())
        self.lengths.write(np.asarray(lengths, "<i8").tobytes())
        self.tokens += int(lengths.sum())
        self.utf8_bytes += int(utf8.sum())

    def finish(self) -> dict:
        assert self.filled == self.count, (self.name, self.filled, self.count)
        for handle in (self.records, self.lengths, self.names):
            handle.close()
        return {"documents": self.count, "tokens": self.tokens, "utf8_bytes": self.utf8_bytes,
                "records": f"{self.name}/records.npy", "lengths": f"{self.name}/lengths.npy",
                "names": f"{self.name}/documents.txt"}


def merge_units(root: Path, units_root: Path, units: list[Unit], split: DocumentSplit | np.ndarray) -> dict:
    """Write the split indexes under `root` from the finished units; returns shards and split stats.
    split: which documents are held out (a bool array: given flags, e.g. a lone document's cut parts)."""
    rel_units = units_root.relative_to(root)
    if isinstance(split, np.ndarray):
        flags, split = split, None
        n_val, n = int(flags.sum()), len(flags)
    else:
        n_val, n = split.n_val, split.n
    indexes = {"validation": _SplitIndex(root, "validation", n_val), "train": _SplitIndex(root, "train", n - n_val)}
    shards, start, mismatched, lines_before = [], 0, 0, 0
    for unit in units:
        meta = read_meta(units_root, unit)
        count = meta["documents"]
        mismatched += meta["byte_mismatch_documents"]
        # the parts of a cut file are consecutive units: a part's offset is the lines of the parts before it
        offset = lines_before if meta.get("continues") else 0
        lines_before = offset + meta["lines"] if meta.get("cut_file") else 0
        if not count:
            continue
        where = unit_dir(units_root, unit)
        shards.append(f"{rel_units.as_posix()}/{unit.name}/{meta['shard']}")
        lengths = np.load(where / "lengths.npy")
        utf8 = np.load(where / "utf8_bytes.npy")
        records = np.arange(start, start + count, dtype=np.int64)
        flags_here = split.is_validation(start, count) if split is not None else flags[start:start + count]
        for name, select in (("validation", flags_here), ("train", ~flags_here)):
            chosen = np.flatnonzero(select)
            indexes[name].add(records[chosen], lengths[chosen], utf8[chosen])
        named = _route_names(where / "names.txt", flags_here, offset if meta.get("continues") else 0, indexes)
        assert named == count == len(lengths), (unit.name, named, count, len(lengths))
        start += count
    splits = {name: indexes[name].finish() for name in SPLITS}
    return {"shards": shards, "splits": splits, "byte_mismatch_documents": mismatched}


