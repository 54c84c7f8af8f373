"""UTF-8 bytes of original text each id of a Hugging Face tokenizer.json stands for.

The vocab stores pieces in the form its pre-tokenizer produced, so the count depends on the scheme:

  ByteLevel (GPT-2, LLaMA-3)   each character of a piece is one byte of the text, through GPT-2's
                               byte <-> printable-character table (byte 0x20 " " is "Ġ", ...)
  Metaspace / SentencePiece    the space mark ("▁") is one space byte, "<0xNN>" byte-fallback
                               pieces one byte, other characters their UTF-8 length
  WordPiece / BPE affixes      the continuing-subword prefix ("##") and end-of-word suffix ("</w>")
                               are markup, not text

Special tokens and the unknown token count zero; other added tokens count their literal content.
Normalizers (lowercasing, NFKC), an added prefix space, or WordPiece's dropped spaces make the sum
over a text differ from its byte length: tokenizer.byte_accounting_check measures by how much.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Iterator

import numpy as np

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@functools.cache
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's table: every byte as a printable character, so byte strings become readable text.

    Bytes that are printable Latin-1 stand for themselves; the other 68 (controls, space, DEL,
    NBSP, soft hyphen) are moved, in byte order, to U+0100 and up."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    moved = (b for b in range(256) if b not in table)
    for offset, b in enumerate(moved):
        table[b] = chr(256 + offset)
    return dict(sorted(table.items()))


@functools.cache
def unicode_to_byte() -> dict[str, int]:
    return {char: byte for byte, char in byte_to_unicode().items()}


def _components(section: dict | None) -> Iterator[dict]:
    """A normalizer / pre-tokenizer / decoder section and, flattened, the members of its Sequences."""
    if not isinstance(section, dict):
        return
    yield section
    for key in ("normalizers", "pretokenizers", "decoders"):
        for member in section.get(key) or ():
            yield from _components(member)


def _space_marks(spec: dict) -> set[str]:
    """Characters that stand for a space in vocab pieces: Metaspace's replacement, or the target of
    a normalizer that replaces " " (the LLaMA-2 tokenizer.json)."""
    marks = set()
    for section in ("pre_tokenizer", "decoder"):
        for part in _components(spec.get(section)):
            if part.get("type") == "Metaspace":
                marks.add(part.get("replacement") or "\u2581")
    for part in _components(spec.get("normalizer")):
        if part.get("type") == "Replace" and part.get("pattern") == {"String": " "} and part.get("content"):
            marks.add(part["content"])
    return marks


def _is_byte_level(spec: dict) -> bool:
    return any(part.get("type") == "ByteLevel"
               for section in ("pre_tokenizer", "decoder") for part in _components(spec.get(section)))


def _has_byte_fallback(spec: dict) -> bool:
    return bool((spec.get("model") or {}).get("byte_fallback")) or any(
        part.get("type") == "ByteFallback" for part in _components(spec.get("decoder")))


def _piece_counter(spec: dict):
    """piece -> UTF-8 bytes it stands for, for pieces of the model's own vocab."""
    model = spec.get("model") or {}
    prefix, suffix = model.get("continuing_subword_prefix") or "", model.get("end_of_word_suffix") or ""

    def strip_affixes(piece: str) -> str:
        if prefix and piece.startswith(prefix) and len(piece) > len(prefix):
            piece = piece[len(prefix):]
        if suffix and piece.endswith(suffix) and len(piece) > len(suffix):
            piece = piece[:-len(suffix)]
        return piece

    if _is_byte_level(spec):
        chars = unicode_to_byte()

        def count(piece: str) -> int:
            piece = strip_affixes(piece)
            return len(piece) if all(c in chars for c in piece) else len(piece.encode("utf-8"))
        return count

    marks, byte_fallback = _space_marks(spec), _has_byte_fallback(spec)

    def count(piece: str) -> int:
        if byte_fallback and _BYTE_PIECE.fullmatch(piece):
            return 1
        piece = strip_affixes(piece)
        for mark in marks:
            piece = piece.replace(mark, " ")
        return len(piece.encode("utf-8"))
    return count


def hf_byte_lengths(processor, vocab_size: int) -> np.ndarray:
    """int32[vocab_size] for a tokenizers.Tokenizer (see the module docstring)."""
    spec = json.loads(processor.to_str())
    added = processor.get_added_tokens_decoder()  # id -> AddedToken
    unk = (spec.get("model") or {}).get("unk_token")
    count = _piece_counter(spec)
    out = np.zeros(vocab_size, np.int32)
    for piece, i in processor.get_vocab(with_added_tokens=True).items():
        if not 0 <= i < vocab_size or piece == unk:
            continue
        token = added.get(i)
        if token is not None:
            out[i] = 0 if token.special else len(token.content.encode("utf-8"))  # matched on the raw text
        else:
            out[i] = count(piece)
    return out
