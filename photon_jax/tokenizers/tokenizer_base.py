"""What every tokenizer offers the rest of the code, whichever library implements it.

Implementations: sentencepiece_tokenizer.SentencePieceTokenizer (a .model file) and
hf_tokenizer.HFTokenizer (a Hugging Face tokenizer.json). Use tokenizer.load_tokenizer to get one.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import os
import shutil
import uuid
from pathlib import Path
from typing import ClassVar

import numpy as np

from photon_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Tokenizer(abc.ABC):
    """A loaded tokenizer with the facts the pipeline, training and evaluation need.

    encode never adds special tokens (the pipeline appends EOS itself); decode drops them.
    byte_lengths()[id] is the number of UTF-8 bytes of original text the id stands for, so that
    summed over a document's ids it is the document's byte length (the bits-per-byte denominator).
    """

    path: str
    sha256: str  # of the file's bytes
    vocab_size: int
    eos_id: int
    pad_id: int  # the id the pipeline pads with (the tokenizer's pad, else EOS); always masked out
    bos_id: int  # -1 when the tokenizer has none
    processor: object = dataclasses.field(repr=False, compare=False)  # the library's own tokenizer object

    kind: ClassVar[str] = ""  # "sentencepiece" | "hf"
    file_name: ClassVar[str] = ""  # the name a prepared data dir or an export stores the file under

    @abc.abstractmethod
    def encode(self, texts: str | list[str], threads: int | None = None) -> list[int] | list[list[int]]:
        """threads: encoding threads for a list (None: the library's default, all cores); prepare's worker
        processes use 1 each, so that --workers N uses N cores."""

    @abc.abstractmethod
    def decode(self, ids) -> str:
        """The text of `ids`, special tokens dropped."""

    @abc.abstractmethod
    def byte_lengths(self) -> np.ndarray:
        """int32[vocab_size]: UTF-8 bytes of original text each id stands for (0 for special tokens)."""

    @abc.abstractmethod
    def save(self, directory: str | Path) -> Path:
        """Copy the tokenizer into `directory` as `file_name` (plus what loading it back needs); its path.

        The file appears whole and last (a rename), so other processes may wait for it to exist."""


def read_tokenizer_file(path: Path) -> tuple[bytes, str]:
    """The file's bytes and their sha256; UserError when it cannot be read."""
    if not path.is_file():
        raise UserError(f"tokenizer file {path} not found")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read tokenizer {path}: {e.strerror or e}") from None
    return data, hashlib.sha256(data).hexdigest()


def copy_atomically(source: str | Path, target: Path) -> None:
    """Copy under a temporary name, then rename: readers never see a partial file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
