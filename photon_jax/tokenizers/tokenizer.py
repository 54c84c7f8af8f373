"""Tokenizers: the public entry. Load one (SentencePiece .model or Hugging Face tokenizer.json), check
its size, and count the bytes its ids stand for.

    load_tokenizer(path) -> Tokenizer             .model, tokenizer.json, or a directory holding one
    train_tokenizer(texts, out_path, vocab_size)  a lossless SentencePiece BPE (sentencepiece_tokenizer)
    token_byte_lengths(tok) -> int32[vocab]       UTF-8 bytes per id (bits-per-byte denominator)
    byte_accounting_check(tok, texts) -> dict     whether those lengths add up to the texts' bytes
    check_vocab(tok | manifest | int, expected)

Every Tokenizer has path, sha256, vocab_size, eos_id, pad_id, bos_id, kind, file_name, encode,
decode, byte_lengths, save (tokenizer_base.Tokenizer).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from photon_jax.errors import UserError
from photon_jax.tokenizers.hf_tokenizer import HFTokenizer, load_hf_tokenizer
from photon_jax.tokenizers.sentencepiece_tokenizer import (
    BOS_ID,
    EOS_ID,
    MODEL_TYPE,
    PAD_ID,
    TRAINER_VERSION,
    UNK_ID,
    SentencePieceTokenizer,
    load_sentencepiece,
    train_tokenizer,
)
from photon_jax.tokenizers.tokenizer_base import Tokenizer

__all__ = ["Tokenizer", "SentencePieceTokenizer", "HFTokenizer", "load_tokenizer", "train_tokenizer",
           "token_byte_lengths", "byte_accounting_check", "check_vocab",
           "PAD_ID", "EOS_ID", "BOS_ID", "UNK_ID", "MODEL_TYPE", "TRAINER_VERSION"]


def _looks_like_json(path: Path) -> bool:
    if path.suffix.lower() == ".json":
        return True
    try:
        with path.open("rb") as f:
            return f.read(64).lstrip().startswith(b"{")  # a SentencePiece model is binary protobuf
    except OSError:
        return False  # the loader reports it


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A SentencePiece .model, a Hugging Face tokenizer.json, or a directory holding one of them
    (tokenizer.json first)."""
    path = Path(path).expanduser()
    if path.is_dir():
        for name, load in ((HFTokenizer.file_name, load_hf_tokenizer),
                           (SentencePieceTokenizer.file_name, load_sentencepiece)):
            if (path / name).is_file():
                return load(path / name)
        raise UserError(f"directory {path} has neither {HFTokenizer.file_name} nor {SentencePieceTokenizer.file_name}")
    if not path.is_file():
        raise UserError(f"tokenizer file {path} not found")
    return load_hf_tokenizer(path) if _looks_like_json(path) else load_sentencepiece(path)


def token_byte_lengths(tokenizer: Tokenizer) -> np.ndarray:
    """int32[vocab]: UTF-8 bytes of original text each id stands for (see each kind's byte_lengths)."""
    return tokenizer.byte_lengths()


def byte_accounting_check(tokenizer: Tokenizer, texts: Iterable[str], lengths: np.ndarray | None = None) -> dict:
    """Does sum(byte_lengths[ids]) equal len(text.encode()) for each text?

    Exact for tokenizers trained here and for ByteLevel / byte-fallback tokenizers without a
    normalizer; a normalizer (lowercasing, NFKC), an added prefix space or dropped spaces
    (WordPiece) make it differ. Pass `lengths` when byte_lengths() is already at hand. Returns
    {texts, exact_texts, inexact_texts, utf8_bytes, token_bytes, max_abs_diff, first_inexact, exact}
    (first_inexact: index of the first text that differs, or None)."""
    texts = list(texts)
    lengths = tokenizer.byte_lengths() if lengths is None else lengths
    utf8 = [len(t.encode("utf-8")) for t in texts]
    counted = [int(lengths[np.asarray(ids, np.int64)].sum()) if ids else 0
               for ids in (tokenizer.encode(texts) if texts else [])]
    diffs = [c - u for c, u in zip(counted, utf8)]
    inexact = [i for i, d in enumerate(diffs) if d]
    return {"texts": len(texts), "exact_texts": len(texts) - len(inexact), "inexact_texts": len(inexact),
            "utf8_bytes": sum(utf8), "token_bytes": sum(counted),
            "max_abs_diff": max((abs(d) for d in diffs), default=0),
            "first_inexact": inexact[0] if inexact else None, "exact": not inexact}


def check_vocab(tokenizer: Tokenizer | dict | int, expected: int, what: str = "the model") -> int:
    """The tokenizer's vocab size; UserError naming both numbers when it is not `expected`."""
    if isinstance(tokenizer, Tokenizer):
        size, name = tokenizer.vocab_size, f"tokenizer {tokenizer.path}"
    elif isinstance(tokenizer, dict):  # a prepared-data manifest
        size, name = int(tokenizer["vocab_size"]), "the prepared data's tokenizer"
    else:
        size, name = int(tokenizer), "the tokenizer"
    if size != expected:
        raise UserError(f"{name} has vocab size {size} but {what} expects {expected}")
    return size
