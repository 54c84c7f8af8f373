"""A SentencePiece run's tokenizer as a Hugging Face tokenizer.json (+ tokenizer_config.json) on export.

Consumers that read only tokenizer.json (vLLM, `tokenizers`, transformers' PreTrainedTokenizerFast)
then get the ids `sentencepiece` gives. The conversion is transformers' SpmConverter built from the
model's own proto, which follows its normalizer spec (here: identity, no dummy prefix, no whitespace
removal), byte fallback and user-defined pieces ("\\n"); tests/test_interop.py compares ids and decoded
text with sentencepiece on a run's held-out split and on whitespace / non-ASCII edge cases.
transformers (and protobuf) are needed for the conversion only; without them export writes
tokenizer.model alone and says so.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from photon_jax.tokenizers.sentencepiece_tokenizer import SentencePieceTokenizer

FILE_NAME, CONFIG_NAME = "tokenizer.json", "tokenizer_config.json"


def converter_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("transformers", "google.protobuf", "tokenizers"))


def write_tokenizer_json(tok: SentencePieceTokenizer, directory: Path, max_length: int) -> list[str]:
    """tokenizer.json and tokenizer_config.json converted from `tok`'s model into `directory`; their names."""
    from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf  # optional dependency

    proto = import_protobuf().ModelProto()
    proto.ParseFromString(Path(tok.path).read_bytes())
    vocab = {piece.piece: i for i, piece in enumerate(proto.pieces)}
    converted = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab)
    converted.encode_special_tokens = True  # "<s>" in text is text to sentencepiece, never the control token
    converted.save(str(directory / FILE_NAME))
    sp = tok.processor
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": sp.id_to_piece(tok.eos_id),
              "pad_token": sp.id_to_piece(tok.pad_id), "unk_token": sp.id_to_piece(sp.unk_id()),
              # training saw documents without BOS, with EOS appended after each (data/preparation/unit_writer.py)
              "add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False,
              "split_special_tokens": True,
              "model_max_length": max_length}
    if tok.bos_id >= 0:
        config["bos_token"] = sp.id_to_piece(tok.bos_id)
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return [FILE_NAME, CONFIG_NAME]
