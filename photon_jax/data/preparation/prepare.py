"""`prepare`: corpus -> tokenizer -> token shards per work unit -> split indexes + manifest.

Layout of a prepared data dir (docs/data.md)::

    manifest.json              format, fingerprint of the inputs, vocab/EOS/pad ids, shards, split stats
    tokenizer.model | .json    the tokenizer (trained here on a bounded sample, or copied from data.tokenizer)
    units/<NNNNN>/tokens.array_record   one record per document: token ids + EOS (uint16 or int32, LE)
    units/<NNNNN>/{lengths,utf8_bytes}.npy, names.txt, meta.json
    <split>/records.npy, lengths.npy, documents.txt   the split's documents as indexes into the shards

How it runs: the inputs are cut into work units (photon_jax.data.preparation.units); `workers`
processes tokenize units in parallel, each unit into its own directory
(photon_jax.data.preparation.unit_writer); when all are done one process merges their metadata into
the split indexes (photon_jax.data.preparation.merge) and writes the manifest last. Everything is
built in a sibling dir ``.<out>.partial-<key>``, keyed by the inputs and the unit plan,
renamed to `out` at the end: a prepare killed at any point leaves finished units there,
and rerunning the same command redoes only the others. With process_count > 1 (a
multi-host launch), process p tokenizes the units i with i % process_count == p into
the same (shared) partial dir; process 0 trains or copies the tokenizer first and
merges last. The corpus is read once to tokenize, plus a bounded sample
(data.tokenizer_sample_mb) when a tokenizer is trained.

Idempotent: the manifest stores a fingerprint of the inputs (name, size and mtime of
every corpus file, the tokenizer, validation fraction, seed, text field, format
version); a second call with the same inputs returns the existing manifest untouched.
Other inputs for an existing dir are refused unless overwrite=True. Bad input (a
corrupt file, a bad line) is one UserError and leaves nothing behind.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from photon_jax.config import DataConfig
from photon_jax.data.manifest import FORMAT, FORMAT_VERSION, MANIFEST_FILE, SPLITS, load_manifest
from photon_jax.data.preparation.corpus import Document, InputFile, corpus_fingerprint, corpus_inputs
from photon_jax.data.preparation.merge import merge_units, split_documents  # noqa: F401 (split_documents: API)
from photon_jax.data.preparation.split import DocumentSplit
from photon_jax.data.preparation.stop import Stopped, stop_on_signals
from photon_jax.data.preparation.unit_writer import (
    META_FILE,
    UnitsDirGone,
    is_done,
    peak_rss_mib,
    read_meta,
    tokenize_unit,
    unit_documents,
    write_documents,
)
from photon_jax.data.preparation.units import Unit, plan_digest, plan_units
from photon_jax.data.preparation.worker_pool import run_tasks
from photon_jax.errors import CorpusError, UserError
from photon_jax.tokenizers.tokenizer import MODEL_TYPE, TRAINER_VERSION, check_vocab, load_tokenizer, train_tokenizer

__all__ = ["prepare", "load_manifest", "split_documents", "MANIFEST_FILE", "SPLITS", "FORMAT_VERSION"]

TRAINED_TOKENIZER_FILE = "tokenizer.model"
_ERROR_FILE = "error.txt"
_LOCK_FILE = ".merge.lock"
_POLL_SECONDS = 0.5
_ERROR_SKEW_SECONDS = 2  # an error file older than this prepare's start is a previous run's (process 0 also
# removes it when it starts)


def _inputs(data_cfg: DataConfig, vocab_size: int, files: list[InputFile]) -> dict:
    if data_cfg.tokenizer:
        tok = load_tokenizer(data_cfg.tokenizer)
        if vocab_size:
            check_vocab(tok, vocab_size, what="the requested vocab size")
        tokenizer = {"file_sha256": tok.sha256}
    else:
        if vocab_size <= 0:
            raise UserError(f"vocab size must be > 0 to train a tokenizer, got {vocab_size}")
        tokenizer = {"train": MODEL_TYPE, "vocab_size": vocab_size, "trainer_version": TRAINER_VERSION,
                     "sample_mb": data_cfg.tokenizer_sample_mb}
    return {"format_version": FORMAT_VERSION, "corpus": corpus_fingerprint(files), "tokenizer": tokenizer,
            "validation_fraction": data_cfg.validation_fraction, "seed": data_cfg.seed,
            "text_field": data_cfg.text_field}


def _complete(out: Path, manifest: dict) -> bool:
    files = [manifest.get("tokenizer", {}).get("file", "")] + list(manifest.get("shards", []))
    for split in manifest.get("splits", {}).values():
        files += [split.get("records", ""), split.get("lengths", "")]
    return all(f and (out / f).is_file() for f in files)


def _fingerprint(inputs: dict, version: int = FORMAT_VERSION) -> str:
    return hashlib.sha256(json.dumps(dict(inputs, format_version=version), sort_keys=True).encode()).hexdigest()


def _reusable(out: Path, inputs: dict) -> dict | None:
    """The complete manifest already in `out` for the same inputs (prepared by any readable version), else None."""
    try:
        existing = load_manifest(out)
    except UserError:
        return None
    if existing.get("fingerprint") == _fingerprint(inputs, existing.get("format_version")) and \
            _complete(out, existing):
        return existing
    return None


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def prepare(data_cfg: DataConfig, out_dir: str | Path, vocab_size: int, *, overwrite: bool = False,
            workers: int | None = None, unit_bytes: int | None = None, process_index: int = 0,
            process_count: int = 1, say: Callable[[str], None] | None = None) -> dict:
    """Prepare `data_cfg.corpus` into `out_dir`; returns the manifest plus "reused" and "seconds".

    vocab_size: size of the tokenizer to train (data_cfg.tokenizer == ""), or the size a given
    tokenizer must have (0 = accept any). workers: tokenizing processes (None: data_cfg.prepare_workers,
    0 = one per core). unit_bytes: input per work unit (None: data_cfg.prepare_unit_mb). A process other
    than 0 returns {"merged": False, "units": ...} once its units are done; the caller waits for process 0
    (e.g. at a barrier) before reading the data. SIGTERM / Ctrl-C raise stop.Stopped / stop.Interrupted
    (the finished units stay; .line() says where) after the workers are stopped.
    """
    with stop_on_signals():
        return _prepare(data_cfg, out_dir, vocab_size, overwrite=overwrite, workers=workers, unit_bytes=unit_bytes,
                        process_index=process_index, process_count=process_count, say=say)


def _prepare(data_cfg: DataConfig, out_dir: str | Path, vocab_size: int, *, overwrite: bool, workers: int | None,
             unit_bytes: int | None, process_index: int, process_count: int,
             say: Callable[[str], None] | None) -> dict:
    start = time.time()
    say = say or (lambda message: None)
    if process_count < 1 or not 0 <= process_index < process_count:
        raise UserError(f"process index {process_index} is not in [0, {process_count})")
    out = Path(out_dir).expanduser().absolute()
    files = corpus_inputs(data_cfg.corpus)
    inputs = _inputs(data_cfg, vocab_size, files)
    fingerprint = _fingerprint(inputs)
    if (out / MANIFEST_FILE).exists():
        existing = _reusable(out, inputs)
        if existing and not overwrite:
            return {**existing, "reused": True, "seconds": time.time() - start}
        if not existing and not overwrite:
            raise UserError(f"{out} already holds prepared data for other inputs (or is incomplete); "
                            "use --force to replace it or choose another --out")
    elif out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not a prepared data dir; use --force to replace it or choose "
                        "another --out")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # e.g. a parent of --out is a file
        raise UserError(f"cannot create {out.parent}: {e.strerror or e}") from None

    if unit_bytes is None:
        unit_bytes = max(1, int(data_cfg.prepare_unit_mb * (1 << 20)))
    units = plan_units(files, unit_bytes)
    key = hashlib.sha256((fingerprint + plan_digest(units, unit_bytes)).encode()).hexdigest()[:16]
    partial = out.parent / f".{out.name}.partial-{key}"
    if overwrite and process_index == 0:  # --force: rebuild from scratch, and drop other inputs' partial dirs
        for stale in out.parent.glob(f".{out.name}.partial-*"):
            shutil.rmtree(stale, ignore_errors=True)
    units_root = partial / "units"
    units_root.mkdir(parents=True, exist_ok=True)
    build = _Build(out, inputs, partial, start, replacing=overwrite)
    if process_index == 0:
        (partial / _ERROR_FILE).unlink(missing_ok=True)  # a previous run's failure
    workers = data_cfg.prepare_workers if workers is None else workers
    workers = workers or default_workers()
    try:
        tokenizer = _tokenizer(build, data_cfg, vocab_size, units, process_index == 0, say)
        dtype = "uint16" if tokenizer.vocab_size <= 1 << 16 else "int32"
        mine = [u for u in units if u.index % process_count == process_index]
        worker_peak = _run_units(mine, units_root, str(partial / tokenizer.file_name), dtype, data_cfg.text_field,
                                 workers, say)
        if process_index != 0:
            return {"merged": False, "units": len(mine), "seconds": time.time() - start,
                    "peak_rss_mib": {"main": peak_rss_mib(), "workers": worker_peak}}
        _wait_for_units(build, units_root, units, say)
        with _merge_lock(partial) as locked:
            build.check_installed(locked)
            manifest = _merge(partial, units_root, units, tokenizer, data_cfg, dtype)
            manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "fingerprint": fingerprint,
                        "inputs": inputs, **manifest, "unit_bytes": unit_bytes,
                        "prepared_with": {"workers": workers, "processes": process_count,
                                          "seconds": round(time.time() - start, 3),
                                          # this process (incl. the merge) and the largest worker process
                                          "peak_rss_mib": {"main": peak_rss_mib(), "workers": worker_peak}}}
            (partial / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            _tidy(partial)
            try:
                _install(partial, out, replace=overwrite)
            except OSError as e:
                raise UserError(f"cannot move prepared data into {out}: {e.strerror or e}") from None
        (out / _LOCK_FILE).unlink(missing_ok=True)  # after the rename: a waiter on it then finds `out` complete
    except _Installed as done:  # another prepare of the same inputs installed `out` first
        return {**done.manifest, "reused": True, "seconds": time.time() - start}
    except (UnitsDirGone, FileNotFoundError) as e:
        existing = _reusable(out, inputs)
        if existing:
            return {**existing, "reused": True, "seconds": time.time() - start}
        raise UserError(f"the partial data dir {partial} vanished while preparing ({e}); rerun") from None
    except BaseException as e:
        if isinstance(e, Stopped):
            done = sum(is_done(units_root, u) for u in units)
            e.kept = f"{done} of {len(units)} work units finished, kept in {partial}"
        if process_count > 1:  # tell the processes waiting on this partial dir, whatever the failure
            _write_error(partial, str(e).splitlines()[0] if str(e) else type(e).__name__)
        elif isinstance(e, CorpusError) or (isinstance(e, UserError) and not _finished_any(units_root)):
            shutil.rmtree(partial, ignore_errors=True)  # bad input: it would fail the same way; keep nothing
        raise
    return {**manifest, "reused": False, "seconds": time.time() - start}


# ----------------------------------------------------------------------------- steps


class _Installed(Exception):
    def __init__(self, manifest: dict):
        super().__init__("installed by another prepare")
        self.manifest = manifest


class _Build:
    """One prepare's view of its partial dir, for the loops that wait on other processes."""

    def __init__(self, out: Path, inputs: dict, partial: Path, start: float, replacing: bool):
        self.out, self.inputs, self.partial, self.start = out, inputs, partial, start
        self.replacing = replacing  # --force: the `out` there now is what this build replaces, whatever it holds

    def check_installed(self, partial_present: bool = True) -> None:
        """_Installed when `out` holds these inputs' data; UserError when the partial dir is gone otherwise."""
        existing = None if self.replacing else _reusable(self.out, self.inputs)
        if existing:
            raise _Installed(existing)
        if not partial_present or not self.partial.is_dir():
            raise UserError(f"the partial data dir {self.partial} vanished while preparing; rerun")

    def check(self) -> None:
        """While waiting: stop when another process failed (an error written since this prepare started,
        give or take clock skew) or when the data got installed."""
        self.check_installed()
        path = self.partial / _ERROR_FILE
        try:
            if path.stat().st_mtime >= self.start - _ERROR_SKEW_SECONDS:  # not a previous run's
                raise UserError(f"another process's prepare failed: {path.read_text().strip()}")
        except OSError:
            pass


def _write_error(partial: Path, message: str) -> None:
    try:
        if not (partial / _ERROR_FILE).exists():  # the first failure is the one to report
            (partial / _ERROR_FILE).write_text(message + "\n")
    except OSError:
        pass


def _finished_any(units_root: Path) -> bool:
    return any(units_root.glob(f"*/{META_FILE}"))


def _sample_texts(units: list[Unit], budget_chars: int, text_field: str) -> Iterator[str]:
    """At most budget_chars characters of text: the whole corpus when its input is within the budget,
    else the first documents of every unit, each unit's share proportional to its input size."""
    total = sum(u.size for u in units)
    left = budget_chars
    for unit in units:
        share = left if total <= budget_chars else max(1, budget_chars * unit.size // max(total, 1))
        taken = 0
        for doc in unit_documents(unit, text_field):
            text = doc.text[:min(share - taken, left)]
            yield text
            taken, left = taken + len(text), left - len(text)
            if taken >= share or left <= 0:
                break
        if left <= 0:
            return


def _tokenizer(build: _Build, data_cfg: DataConfig, vocab_size: int, units: list[Unit], is_first: bool, say):
    """The tokenizer in the partial dir: copied or trained there by process 0, awaited by the others."""
    partial = build.partial
    if data_cfg.tokenizer:
        given = load_tokenizer(data_cfg.tokenizer)
        target = partial / given.file_name
        if is_first and not target.is_file():
            given.save(partial)  # with what loading it back needs (tokenizer.json: its special tokens)
    else:
        target = partial / TRAINED_TOKENIZER_FILE
        if is_first and not target.is_file():
            say(f"training a {vocab_size}-piece tokenizer on up to {data_cfg.tokenizer_sample_mb} MB of text ...")
            texts = _sample_texts(units, data_cfg.tokenizer_sample_mb << 20, data_cfg.text_field)
            first = next(texts, None)  # every unit yields its first document if it has any
            if first is None:
                raise CorpusError(f"corpus {data_cfg.corpus} has no text (every document is empty or whitespace)")
            texts = itertools.chain([first], texts)
            tmp = partial / f".tokenizer-{uuid.uuid4().hex[:8]}.model"
            train_tokenizer(texts, tmp, vocab_size)
            os.replace(tmp, target)
    while not target.is_file():
        build.check()
        time.sleep(_POLL_SECONDS)
    return load_tokenizer(target)


def _run_units(units: list[Unit], units_root: Path, tokenizer_path: str, dtype: str, text_field: str,
               workers: int, say) -> float | None:
    """Tokenize the units not done yet; the worker processes' peak RSS in MiB (None: none ran)."""
    pending = [u for u in units if not is_done(units_root, u)]
    if len(pending) < len(units):
        say(f"reusing {len(units) - len(pending)} finished work units")
    workers = max(1, min(workers, len(pending)))
    if workers == 1 or not pending:
        for done, unit in enumerate(pending, start=1):
            tokenize_unit(unit, str(units_root), tokenizer_path, dtype, text_field)
            say(f"work units {done}/{len(pending)}")
        return None  # in this process
    peaks = []

    def finished(result) -> None:
        peaks.append(result[2])
        say(f"work units {len(peaks)}/{len(pending)} on {workers} workers")

    # fresh worker processes (not fork: the caller may hold JAX / threads; not multiprocessing: worker_pool.py)
    run_tasks("tokenize_unit", [(u, str(units_root), tokenizer_path, dtype, text_field) for u in pending],
              workers, finished)
    return max((p for p in peaks if p is not None), default=None)


def _wait_for_units(build: _Build, units_root: Path, units: list[Unit], say) -> None:
    """Until every unit is done (advancing past finished ones, so each poll stats few files)."""
    last_report, first_missing = time.time(), 0
    while True:
        while first_missing < len(units) and is_done(units_root, units[first_missing]):
            first_missing += 1
        if first_missing == len(units):
            return
        build.check()
        if time.time() - last_report > 60:
            say(f"waiting for {len(units) - first_missing} work units of other processes")
            last_report = time.time()
        time.sleep(_POLL_SECONDS)


class _merge_lock:
    """An exclusive lock on the partial dir while merging (released by the OS if the process dies)."""

    def __init__(self, partial: Path):
        self.path = partial / _LOCK_FILE

    def __enter__(self) -> bool:
        """False when the partial dir is gone (another process installed it)."""
        try:
            self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        except FileNotFoundError:
            self.fd = None
            return False
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return (self.path.parent / "units").is_dir()

    def __exit__(self, *exc):
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)


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


def _merge(partial: Path, units_root: Path, units: list[Unit], tokenizer, data_cfg: DataConfig, dtype: str) -> dict:
    n = sum(read_meta(units_root, u)["documents"] for u in units)
    if n == 0:
        raise CorpusError(f"corpus {data_cfg.corpus} has no text (every document is empty or whitespace)")
    fraction = data_cfg.validation_fraction
    if n == 1 and fraction > 0:
        # a lone document (one text file) is cut into a train part and a validation part instead
        doc = next(d for u in units for d in unit_documents(u, data_cfg.text_field))
        parts = _cut_single(doc, fraction)
        if len(parts) == 2:
            # the two parts are a unit of their own dir (redone safely after a kill, like any unit); the
            # uncut document's unit is dropped only once the split indexes point at the parts
            cut_root, cut_unit = partial / "cut", Unit(0, ())
            cut_root.mkdir(exist_ok=True)
            if not is_done(cut_root, cut_unit):
                write_documents(parts, cut_root / cut_unit.name, str(tokenizer.path), dtype)
            merged = merge_units(partial, cut_root, [cut_unit], np.array([False, True]))
            shutil.rmtree(units_root, ignore_errors=True)
            return _manifest_core(data_cfg, tokenizer, dtype, 2, 1, merged)
    merged = merge_units(partial, units_root, units, DocumentSplit(n, fraction, data_cfg.seed))
    return _manifest_core(data_cfg, tokenizer, dtype, n, len(units), merged)


def _manifest_core(data_cfg: DataConfig, tokenizer, dtype: str, n: int, n_units: int, merged: dict) -> dict:
    mismatched = merged.pop("byte_mismatch_documents")
    fraction = data_cfg.validation_fraction
    return {
        "corpus": data_cfg.corpus, "text_field": data_cfg.text_field,
        "vocab_size": tokenizer.vocab_size, "eos_id": tokenizer.eos_id, "pad_id": tokenizer.pad_id,
        "token_dtype": dtype,
        "tokenizer": {"file": tokenizer.file_name, "sha256": tokenizer.sha256, "kind": tokenizer.kind,
                      "source": str(Path(data_cfg.tokenizer).expanduser().absolute()) if data_cfg.tokenizer
                      else "trained", "bos_id": tokenizer.bos_id,
                      "model_type": "given" if data_cfg.tokenizer else MODEL_TYPE,
                      # bits per byte are exact when every document's token byte lengths add up to its bytes
                      "bytes_exact": mismatched == 0, "byte_mismatch_documents": mismatched},
        "validation_fraction": fraction, "seed": data_cfg.seed,
        "documents": n, "units": n_units, **merged,
    }


def _tidy(partial: Path) -> None:
    """Remove what only the build needed: leftover unit temporaries and the error file (the lock file is
    removed after the install: unlinking it while held would let a second merger lock a fresh file)."""
    for leftover in (partial / "units").glob(".tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    (partial / _ERROR_FILE).unlink(missing_ok=True)


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
