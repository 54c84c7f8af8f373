"""Merging finished work units into the train/validation splits of a prepared dir.

Nothing is re-tokenized or copied: the units' shards, read in unit order, are the
corpus' documents in order (global record g = document g), and each split is an
index over them:

    <split>/records.npy     int64 global record ids of the split's documents, ascending
    <split>/lengths.npy     int64 tokens per document (EOS included), same order
    <split>/documents.txt   one document name per line, same order

The split is by document: a seeded permutation of the document indices picks
round(validation_fraction * n) validation documents (at least one in each split when
n >= 2 and the fraction is > 0). Memory: 5 bytes per document for the permutation and
the split flags (uint32 + bool; 0.9 GB for the Pile's ~177M documents), plus one unit's
metadata at a time; the index files are written through memory maps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from photon_jax.data.unit_writer import read_meta, unit_dir
from photon_jax.data.units import Unit

SPLITS = ("train", "validation")


def split_documents(n: int, fraction: float, seed: int) -> np.ndarray:
    """bool[n], True for validation documents: a seeded choice by document index.

    The permutation is the one `Generator.permutation(n)` gives, shuffled in place on
    uint32 ids to halve its memory (numpy shuffles any 1-d integer array identically).
    """
    n_val = 0
    if n >= 2 and fraction > 0:
        n_val = min(n - 1, max(1, int(round(n * fraction))))
    is_val = np.zeros(n, bool)
    if n_val:
        order = np.arange(n, dtype=np.uint32 if n < (1 << 32) else np.int64)
        np.random.default_rng([seed % (1 << 64), 0x5EED]).shuffle(order)
        is_val[order[:n_val]] = True
        del order
    return is_val


def _renamed(names: list[str], offset: int) -> list[str]:
    """Names "file.jsonl:LOCAL" of a later part of a cut file -> absolute line numbers."""
    out = []
    for name in names:
        rel, line = name.rsplit(":", 1)
        out.append(f"{rel}:{int(line) + offset}")
    return out


class _SplitIndex:
    def __init__(self, root: Path, name: str, count: int):
        self.name, self.count, self.filled = name, count, 0
        (root / name).mkdir(exist_ok=True)
        self.records = np.lib.format.open_memmap(root / name / "records.npy", "w+", np.int64, (count,))
        self.lengths = np.lib.format.open_memmap(root / name / "lengths.npy", "w+", np.int64, (count,))
        self.names = open(root / name / "documents.txt", "w", encoding="utf-8")
        self.tokens = self.utf8_bytes = 0

    def add(self, records: np.ndarray, lengths: np.ndarray, utf8: np.ndarray, names: list[str]) -> None:
        end = self.filled + len(records)
        self.records[self.filled:end] = records
        self.lengths[self.filled:end] = lengths
        self.filled = end
        self.tokens += int(lengths.sum())
        self.utf8_bytes += int(utf8.sum())
        self.names.writelines(n + "\n" for n in names)

    def finish(self) -> dict:
        assert self.filled == self.count, (self.name, self.filled, self.count)
        self.records.flush()
        self.lengths.flush()
        del self.records, self.lengths
        self.names.close()
        return {"documents": self.count, "tokens": self.tokens, "utf8_bytes": self.utf8_bytes,
                "records": f"{self.name}/records.npy", "lengths": f"{self.name}/lengths.npy",
                "names": f"{self.name}/documents.txt"}


def merge_units(root: Path, units_root: Path, units: list[Unit], is_val: np.ndarray) -> dict:
    """Write the split indexes under `root` from the finished units; returns shards and split stats."""
    rel_units = units_root.relative_to(root)
    indexes = {"validation": _SplitIndex(root, "validation", int(is_val.sum())),
               "train": _SplitIndex(root, "train", int(len(is_val) - is_val.sum()))}
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
        names = (where / "names.txt").read_text(encoding="utf-8").split("\n")[:-1]  # not splitlines: \x0c etc.
        assert len(names) == count == len(lengths), (unit.name, len(names), count, len(lengths))
        if meta.get("continues"):
            names = _renamed(names, offset)
        records = np.arange(start, start + count, dtype=np.int64)
        flags = is_val[start:start + count]
        for split, select in (("validation", flags), ("train", ~flags)):
            chosen = np.flatnonzero(select)
            indexes[split].add(records[chosen], lengths[chosen], utf8[chosen], [names[i] for i in chosen])
        start += count
    splits = {name: indexes[name].finish() for name in SPLITS}
    return {"shards": shards, "splits": splits, "byte_mismatch_documents": mismatched}


