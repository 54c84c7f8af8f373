"""SentencePiece tokenizers: train one in-process, load a .model file, count the bytes of its pieces.

Trained tokenizers are lossless byte-level BPE: identity normalization (no NFKC,
whitespace kept as is), no dummy-prefix space, digits split, byte fallback for
anything outside the learned pieces, and "\\n" as its own piece. So
``decode(encode(text)) == text`` and the UTF-8 byte lengths of the pieces of a
text add up to the byte length of the text, which makes bits per byte exact.

Special ids of trained tokenizers: 0 <pad>, 1 </s> (EOS, appended to every
document), 2 <s> (BOS, unused by the pipeline), 3 <unk>, 4 "\\n", then the 256
byte pieces <0x00>..<0xFF>, then the learned pieces. Training is deterministic
(one thread, fixed seed, no sampling below 2M lines): the same corpus and vocab
size give a byte-identical model file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import re
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from photon_jax.errors import UserError
from photon_jax.tokenizers.tokenizer_base import Tokenizer, copy_atomically, read_tokenizer_file

PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3
MODEL_TYPE = "bpe"
# Bump when the training options below change: prepared data keyed on it is rebuilt.
TRAINER_VERSION = 1
_MAX_LINE_CHARS = 8192
_MAX_TRAIN_LINES = 2_000_000


@dataclasses.dataclass(frozen=True)
class SentencePieceTokenizer(Tokenizer):
    """A loaded SentencePiece model (processor: a sentencepiece.SentencePieceProcessor)."""

    kind = "sentencepiece"
    file_name = "tokenizer.model"

    def encode(self, texts: str | list[str], threads: int | None = None) -> list[int] | list[list[int]]:
        return self.processor.encode(texts, num_threads=-1 if threads is None else threads)

    def decode(self, ids) -> str:
        return self.processor.decode([int(i) for i in ids])

    def byte_lengths(self) -> np.ndarray:
        """"▁" counts as one space byte, byte-fallback pieces <0xNN> as one byte, control pieces
        (<pad>, </s>, <s>) and <unk> as zero. Summed over a document's ids this is the document's
        byte length for tokenizers trained here (identity normalization, no dummy prefix); for
        other models it is an approximation (byte_accounting_check measures how good)."""
        sp = self.processor
        out = np.zeros(self.vocab_size, np.int32)
        for i in range(self.vocab_size):
            if sp.is_control(i) or sp.is_unknown(i):
                continue
            if sp.is_byte(i):
                out[i] = 1
            else:
                out[i] = len(sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8"))
        return out

    def save(self, directory: str | Path) -> Path:
        target = Path(directory) / self.file_name
        if target.resolve() != Path(self.path).resolve():
            copy_atomically(self.path, target)
        return target


def sentencepiece_from_bytes(data: bytes, path: str) -> SentencePieceTokenizer:
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(data)
    except Exception:  # sentencepiece raises RuntimeError or OSError depending on the build
        raise UserError(f"tokenizer {path} is not a SentencePiece model") from None
    eos = processor.eos_id()
    if eos < 0:
        raise UserError(f"tokenizer {path} has no end-of-sequence (</s>) piece; the pipeline needs one")
    pad = processor.pad_id()
    return SentencePieceTokenizer(path=str(path), sha256=hashlib.sha256(data).hexdigest(),
                                  vocab_size=processor.vocab_size(), eos_id=eos, pad_id=pad if pad >= 0 else eos,
                                  bos_id=processor.bos_id(), processor=processor)


def load_sentencepiece(path: Path) -> SentencePieceTokenizer:
    data, _ = read_tokenizer_file(path)
    return sentencepiece_from_bytes(data, str(path))


def _training_lines(texts: Iterable[str]) -> Iterator[str]:
    """Non-blank lines, long ones cut into pieces SentencePiece accepts."""
    for text in texts:
        for line in text.split("\n"):
            if not line.strip():
                continue
            for start in range(0, len(line), _MAX_LINE_CHARS):
                yield line[start:start + _MAX_LINE_CHARS]


def train_tokenizer(texts: Iterable[str], out_path: str | Path, vocab_size: int) -> SentencePieceTokenizer:
    """Train a lossless BPE model on `texts` (an iterable of documents) and write it to `out_path`."""
    import sentencepiece as spm

    if vocab_size <= 0:
        raise UserError(f"tokenizer vocab size must be > 0, got {vocab_size}")
    spm.set_random_generator_seed(0)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_training_lines(texts), model_writer=model, vocab_size=vocab_size,
            model_type=MODEL_TYPE, byte_fallback=True, character_coverage=1.0,
            normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
            split_digits=True, allow_whitespace_only_pieces=True, user_defined_symbols=["\n"],
            pad_id=PAD_ID, eos_id=EOS_ID, bos_id=BOS_ID, unk_id=UNK_ID, num_threads=1,
            input_sentence_size=_MAX_TRAIN_LINES, shuffle_input_sentence=True,
            max_sentence_length=4 * _MAX_LINE_CHARS + 16, minloglevel=2)
    except RuntimeError as e:
        message = str(e)
        found = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", message)
        if found:
            raise UserError(f"vocab size {vocab_size} is too small for this corpus: it needs at least "
                            f"{found.group(2)} (special + 256 byte pieces + every distinct character)") from None
        found = re.search(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)", message)
        if found:
            raise UserError(f"the corpus is too small for a {vocab_size}-piece tokenizer: use a vocab size "
                            f"<= {found.group(2)} or a larger corpus") from None
        first = message.strip().splitlines()[0] if message.strip() else "unknown error"
        raise UserError(f"tokenizer training failed: {first[:300]}") from None
    data = model.getvalue()
    tokenizer = sentencepiece_from_bytes(data, str(out_path))
    if tokenizer.vocab_size != vocab_size:
        raise UserError(f"the corpus is too small for a {vocab_size}-piece tokenizer (BPE stopped at "
                        f"{tokenizer.vocab_size}); use a smaller vocab size or a larger corpus")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(data)
    return tokenizer
