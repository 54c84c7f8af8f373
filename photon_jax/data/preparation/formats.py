"""Reading the documents of one piece of an input file, format by format.

Text is decoded as strict UTF-8 (a leading byte-order mark is dropped) and CRLF
line endings become LF; documents that are empty or whitespace-only are skipped.
A JSONL line must be an object whose text field is a string (other fields are
ignored); a parquet file or dataset must have the text field as a string column.
Every problem is a one-line UserError naming the file and the line or row. Pieces
are streamed: memory holds one document (and a bounded read buffer), never a file.
Compressed JSONL needs the [data] extra for .zst; parquet and datasets dirs need
pyarrow / datasets (also in the [data] extra).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import zlib
from typing import Iterator

from photon_jax.data.preparation.columnar import EXTRA, open_dataset, open_parquet
from photon_jax.data.preparation.corpus import (
    HF_DATASET,
    JSONL,
    JSONL_GZ,
    JSONL_ZST,
    PARQUET,
    TEXT,
    Document,
    InputFile,
    corpus_inputs,
)
from photon_jax.data.preparation.units import Piece, whole_file_pieces
from photon_jax.errors import CorpusError, UserError

_ROW_BATCH = 1024


def _decode(data: bytes, where: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(f"{where} is not valid UTF-8 (bad byte at offset {e.start})") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    return text.replace("\r\n", "\n")


def _text_document(piece: Piece) -> Iterator[Document]:
    """A text file is one document; a part of a large one (units.TEXT_PART_BYTES) is "<name>@<byte offset>"."""
    try:
        with open(piece.file.path, "rb") as handle:
            handle.seek(piece.start)
            data = handle.read() if piece.stop < 0 else handle.read(piece.stop - piece.start)
    except OSError as e:
        raise UserError(f"cannot read {piece.file.path}: {e.strerror or e}") from None
    where = piece.file.path if piece.stop < 0 else f"{piece.file.path} (bytes {piece.start}-{piece.stop})"
    text = _decode(data, where)
    if text.strip():
        yield Document(piece.file.rel if piece.stop < 0 else f"{piece.file.rel}@{piece.start}", text)


def count_newlines(path: str, start: int, stop: int) -> int:
    """Newlines in bytes [start, stop) of a file, read in 16 MiB blocks."""
    count = 0
    try:
        with open(path, "rb") as handle:
            handle.seek(start)
            remaining = stop - start
            while remaining > 0:
                block = handle.read(min(remaining, 1 << 24))
                if not block:
                    break
                count += block.count(b"\n")
                remaining -= len(block)
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    return count


def _line_number(path: str, start: int, local: int) -> int:
    """Absolute line number of line `local` (1-based) of a piece starting at byte `start`: only for errors."""
    return local + (count_newlines(path, 0, start) if start else 0)


def _zstd_lines(raw) -> Iterator[bytes]:
    """Lines of a zstd file of one or more frames; a truncated last frame is an error (the library's
    stream reader would end quietly)."""
    import zstandard

    context = zstandard.ZstdDecompressor()
    frame, open_frame = context.decompressobj(), False
    rest: list[bytes] = []
    while block := raw.read(1 << 16):  # small reads: the output of one is at most 64 KiB x the ratio
        while block:
            data = frame.decompress(block)
            open_frame = not frame.eof
            block = b""
            if frame.eof:  # the next frame starts in what this one did not use
                block, frame = frame.unused_data, context.decompressobj()
            if not data:
                continue
            lines = data.split(b"\n")
            if len(lines) == 1:
                rest.append(lines[0])
                continue
            yield b"".join(rest) + lines[0] + b"\n"
            for line in lines[1:-1]:
                yield line + b"\n"
            rest = [lines[-1]]
    if open_frame:
        raise zstandard.ZstdError("the file ends inside a frame (truncated)")
    if any(rest):
        yield b"".join(rest)


def _open_lines(f: InputFile):
    """(iterator over the decompressed file's lines, the raw file to close)."""
    try:
        raw = open(f.path, "rb")
    except OSError as e:
        raise UserError(f"cannot read {f.path}: {e.strerror or e}") from None
    if f.fmt == JSONL_GZ:
        return iter(gzip.GzipFile(fileobj=raw, mode="rb")), raw
    if f.fmt == JSONL_ZST:
        if importlib.util.find_spec("zstandard") is None:
            raw.close()
            raise UserError(f"reading {f.path} needs the zstandard package ({EXTRA})") from None
        return _zstd_lines(raw), raw
    return raw, raw


def _stream_error(f: InputFile, error: Exception) -> UserError:
    kind = {JSONL_GZ: "gzip", JSONL_ZST: "zstd"}.get(f.fmt, "")
    detail = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
    # a corrupt stream is the file's content (CorpusError); another OSError is the disk's (UserError)
    corrupt = isinstance(error, (EOFError, zlib.error, gzip.BadGzipFile)) or not isinstance(error, OSError)
    if kind and corrupt:
        return CorpusError(f"{f.path} is not a valid {kind} stream ({detail})")
    return UserError(f"cannot read {f.path}: {detail}")


def _jsonl_documents(piece: Piece, text_field: str) -> Iterator[Document]:
    f = piece.file
    errors = (OSError, EOFError, zlib.error)
    if f.fmt == JSONL_ZST:
        import zstandard

        errors = errors + (zstandard.ZstdError,)
    lines, raw = _open_lines(f)
    stop = f.size if piece.stop < 0 else piece.stop
    with raw:
        if piece.start:
            raw.seek(piece.start)  # an uncompressed JSONL piece: lines is the raw file itself
        position, local = piece.start, 0
        lines = iter(lines)
        while f.fmt != JSONL or position < stop:
            try:
                line = next(lines)
            except StopIteration:
                break
            except errors as e:
                raise _stream_error(f, e) from None
            position += len(line)
            local += 1
            record = _jsonl_record(line, piece, local, text_field)
            if record is not None and record.strip():
                yield Document(f"{f.rel}:{local}", record.replace("\r\n", "\n"))


def _jsonl_record(line: bytes, piece: Piece, local: int, text_field: str) -> str | None:
    def where() -> str:
        return f"{piece.file.path} line {_line_number(piece.file.path, piece.start, local)}"

    try:
        text = line.decode("utf-8").strip()
    except UnicodeDecodeError as e:
        raise CorpusError(f"{where()} is not valid UTF-8 (bad byte at offset {e.start})") from None
    text = text.lstrip("\ufeff")
    if not text:
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise CorpusError(f"{where()} is not valid JSON ({e.msg})") from None
    except RecursionError:
        raise CorpusError(f"{where()} is JSON nested too deeply to read") from None
    if not isinstance(record, dict):
        raise CorpusError(f"{where()} is not a JSON object (got {type(record).__name__})")
    value = record.get(text_field)
    if not isinstance(value, str):
        raise CorpusError(f'{where()} has no "{text_field}" string field')
    return value


def _text_column(schema_names: list[str], field: str, where: str) -> None:
    if field not in schema_names:
        raise CorpusError(f'{where} has no "{field}" column (columns: {", ".join(schema_names) or "none"}); '
                        f"set data.text_field")


def _rows(values, first_row: int, name: str, where: str) -> Iterator[Document]:
    for offset, value in enumerate(values):
        if value is None:
            continue  # a null row has no text, like an empty one
        if not isinstance(value, str):
            raise CorpusError(f"{where} row {first_row + offset} is not a string ({type(value).__name__})")
        if value.strip():
            yield Document(f"{name}:{first_row + offset}", value.replace("\r\n", "\n"))


def _parquet_documents(piece: Piece, text_field: str) -> Iterator[Document]:
    f = piece.file
    handle = open_parquet(f.path)
    _text_column(handle.schema_arrow.names, text_field, f.path)
    stop = handle.metadata.num_row_groups if piece.stop < 0 else piece.stop
    row = piece.first_row
    try:
        for batch in handle.iter_batches(batch_size=_ROW_BATCH, row_groups=list(range(piece.start, stop)),
                                         columns=[text_field]):
            values = batch.column(0).to_pylist()
            yield from _rows(values, row, f.rel, f.path)
            row += len(values)
    except UserError:
        raise
    except Exception as e:  # corrupt pages surface while reading
        raise CorpusError(f"{f.path} is not a readable parquet file ({str(e).splitlines()[0][:200]})") from None


def _dataset_documents(piece: Piece, text_field: str) -> Iterator[Document]:
    f = piece.file
    table = open_dataset(f).data.table  # the memory-mapped pyarrow table
    _text_column(table.column_names, text_field, f.path)
    column = table.column(text_field)
    stop = table.num_rows if piece.stop < 0 else piece.stop
    for start in range(piece.start, stop, _ROW_BATCH):
        values = column.slice(start, min(_ROW_BATCH, stop - start)).to_pylist()
        yield from _rows(values, start, f.rel, f.path)


def read_piece(piece: Piece, text_field: str = "text") -> Iterator[Document]:
    """The non-empty documents of `piece`, in file order."""
    fmt = piece.file.fmt
    if fmt == TEXT:
        return _text_document(piece)
    if fmt in (JSONL, JSONL_GZ, JSONL_ZST):
        return _jsonl_documents(piece, text_field)
    if fmt == PARQUET:
        return _parquet_documents(piece, text_field)
    if fmt == HF_DATASET:
        return _dataset_documents(piece, text_field)
    raise AssertionError(f"unknown input format {fmt}")


def iter_documents(corpus: str, text_field: str = "text") -> Iterator[Document]:
    """Stream the non-empty documents of `corpus` in the deterministic order prepare stores them
    (before the train/validation split)."""
    for piece in whole_file_pieces(corpus_inputs(corpus)):
        for doc in read_piece(piece, text_field):
            yield doc


def read_corpus(corpus: str, text_field: str = "text") -> list[Document]:
    """All documents of `corpus`; UserError when there is no text at all."""
    docs = list(iter_documents(corpus, text_field))
    if not docs:
        raise CorpusError(f"corpus {corpus} has no text (every document is empty or whitespace)")
    return docs
