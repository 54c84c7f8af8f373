"""Work units: the corpus cut into pieces that workers tokenize independently.

A piece is a whole file or a contiguous part of one: a byte range of an uncompressed
JSONL file (cut just after a newline), a run of row groups of a parquet file, a
row range of a datasets split, a part of a text file over TEXT_PART_BYTES (cut just
after a newline; each part is a document of its own, so no document is held whole
beyond that size). Compressed JSONL files are never cut.
Consecutive small pieces are packed into one unit up to `unit_bytes`; a piece that
continues a cut JSONL file is always alone in its unit (its line numbers are only
known relative to its start; the merge makes them absolute). The plan depends only
on the inputs and `unit_bytes`, so every process of a multi-host prepare computes
the same one, and reading the units in index order gives the corpus order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Iterable

from photon_jax.data.preparation.columnar import open_dataset, open_parquet
from photon_jax.data.preparation.corpus import HF_DATASET, JSONL, PARQUET, TEXT, InputFile
from photon_jax.errors import UserError

# A text file larger than this is read as consecutive documents of about this size, cut after a newline
# (where a line is longer than _LONGEST_LINE, at a UTF-8 character boundary): independent of the unit size,
# so the documents, and the split, depend only on the file.
TEXT_PART_BYTES = 1 << 20
_LONGEST_LINE = 1 << 20


@dataclasses.dataclass(frozen=True)
class Piece:
    file: InputFile
    start: int = 0  # JSONL: byte offset; PARQUET: first row group; HF_DATASET: first row
    stop: int = -1  # exclusive end in the same unit; -1 = to the end of the file
    first_row: int = 0  # PARQUET: row index (in the file) of the first row of row group `start`
    size: int = 0  # input bytes (approximate for parquet / datasets: uncompressed column sizes)

    @property
    def continues(self) -> bool:
        """A later part of a cut JSONL file: its documents' line numbers need an offset."""
        return self.file.fmt == JSONL and self.start > 0

    def describe(self) -> list:
        f = self.file
        return [f.rel, f.fmt, f.split, f.size, f.stamp, self.start, self.stop, self.first_row]


@dataclasses.dataclass(frozen=True)
class Unit:
    index: int
    pieces: tuple[Piece, ...]

    @property
    def size(self) -> int:
        return sum(p.size for p in self.pieces)

    @property
    def name(self) -> str:
        return f"{self.index:05d}"


def plan_digest(units: list[Unit], unit_bytes: int) -> str:
    """Identity of a plan: the same inputs cut the same way."""
    text = json.dumps([unit_bytes] + [[p.describe() for p in u.pieces] for u in units])
    return hashlib.sha256(text.encode()).hexdigest()


def _byte_bounds(f: InputFile, step: int, cut_at) -> list[int]:
    """0, then a boundary about every `step` bytes (cut_at(handle, target) -> the boundary at or after
    target), then the file size."""
    bounds = [0]
    try:
        with open(f.path, "rb") as handle:
            while bounds[-1] + step < f.size:
                cut = cut_at(handle, bounds[-1] + step)
                if cut >= f.size:
                    break
                bounds.append(cut)
    except OSError as e:
        raise UserError(f"cannot read {f.path}: {e.strerror or e}") from None
    return bounds + [f.size]


def _after_line(handle, target: int) -> int:
    """Just after the newline ending the line that holds the byte before target."""
    handle.seek(target - 1)
    handle.readline()
    return handle.tell()


def _after_line_or_character(handle, target: int) -> int:
    """After the newline ending the line at target; in a very long line, the start of a UTF-8 character."""
    handle.seek(target)
    line = handle.readline(_LONGEST_LINE)
    cut = handle.tell()
    if not line.endswith(b"\n"):
        handle.seek(cut - len(line))
        head = handle.read(4)
        cut = cut - len(line) + next((i for i, b in enumerate(head) if b & 0xC0 != 0x80), 0)
    return cut


def _jsonl_cuts(f: InputFile, unit_bytes: int) -> list[Piece]:
    """Byte ranges of about unit_bytes, each starting just after a newline."""
    bounds = _byte_bounds(f, unit_bytes, _after_line)
    return [Piece(f, a, b, size=b - a) for a, b in zip(bounds[:-1], bounds[1:])]


def _text_cuts(f: InputFile) -> list[Piece]:
    """Byte ranges of about TEXT_PART_BYTES, each ending after a newline (or a whole character)."""
    bounds = _byte_bounds(f, TEXT_PART_BYTES, _after_line_or_character)
    if len(bounds) == 2:
        return [Piece(f, size=f.size)]
    return [Piece(f, a, b, size=b - a) for a, b in zip(bounds[:-1], bounds[1:])]


def _parquet_cuts(f: InputFile, unit_bytes: int) -> list[Piece]:
    meta = open_parquet(f.path).metadata
    pieces, start, first_row, size, row = [], 0, 0, 0, 0
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        if size and size + group.total_byte_size > unit_bytes:
            pieces.append(Piece(f, start, g, first_row, size))
            start, first_row, size = g, row, 0
        size += group.total_byte_size
        row += group.num_rows
    pieces.append(Piece(f, start, meta.num_row_groups, first_row, size))
    return pieces


def _dataset_cuts(f: InputFile, unit_bytes: int) -> list[Piece]:
    table = open_dataset(f).data
    rows, nbytes = table.num_rows, max(1, table.nbytes)
    per_piece = max(1, int(unit_bytes * rows // nbytes))
    return [Piece(f, a, min(rows, a + per_piece), size=nbytes * (min(rows, a + per_piece) - a) // max(rows, 1))
            for a in range(0, max(rows, 1), per_piece)]


def _pieces(f: InputFile, unit_bytes: int) -> list[Piece]:
    if f.fmt == JSONL and f.size > unit_bytes:
        return _jsonl_cuts(f, unit_bytes)
    if f.fmt == PARQUET:
        return _parquet_cuts(f, unit_bytes)
    if f.fmt == HF_DATASET:
        return _dataset_cuts(f, unit_bytes)
    if f.fmt == TEXT and f.size > TEXT_PART_BYTES:
        return _text_cuts(f)
    return [Piece(f, size=f.size)]


def plan_units(inputs: Iterable[InputFile], unit_bytes: int) -> list[Unit]:
    if unit_bytes <= 0:
        raise UserError(f"work unit size must be > 0 bytes, got {unit_bytes}")
    units: list[Unit] = []
    current: list[Piece] = []
    current_size = 0

    def flush():
        nonlocal current_size
        if current:
            units.append(Unit(len(units), tuple(current)))
            current.clear()
            current_size = 0

    for f in inputs:
        for piece in _pieces(f, unit_bytes):
            if piece.continues or (current and current_size + piece.size > unit_bytes):
                flush()
            current.append(piece)
            current_size += piece.size
            if piece.continues:
                flush()
    flush()
    return units


def whole_file_pieces(inputs: Iterable[InputFile]) -> list[Piece]:
    """One piece per input (a large text file: per part, as prepare reads it), for reading a corpus start to end
    in one process."""
    return [p for f in inputs for p in (_text_cuts(f) if f.fmt == TEXT and f.size > TEXT_PART_BYTES
                                        else [Piece(f, size=f.size)])]
