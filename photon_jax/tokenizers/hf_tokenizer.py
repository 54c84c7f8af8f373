"""Hugging Face tokenizers: load a tokenizer.json (GPT-2, LLaMA-3, Mistral, ... style) through the
`tokenizers` library (the [data] extra).

Special ids come from tokenizer_config.json beside the file when it names them (eos_token,
bos_token, pad_token: a string or {"content": ...}), else from the usual token names below.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from photon_jax.errors import UserError
from photon_jax.tokenizers.hf_byte_lengths import hf_byte_lengths
from photon_jax.tokenizers.tokenizer_base import Tokenizer, copy_atomically, read_tokenizer_file

FILE_NAME = "tokenizer.json"
CONFIG_NAME = "tokenizer_config.json"
# Tried in order when tokenizer_config.json does not name the token.
EOS_NAMES = ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>")
BOS_NAMES = ("<s>", "<|begin_of_text|>", "<bos>")
PAD_NAMES = ("<pad>", "<|pad|>")
_INSTALL = "pip install 'photon-jax[data]'"


@dataclasses.dataclass(frozen=True)
class HFTokenizer(Tokenizer):
    """A loaded tokenizer.json (processor: a tokenizers.Tokenizer, padding and truncation off)."""

    kind = "hf"
    file_name = FILE_NAME

    def encode(self, texts: str | list[str], threads: int | None = None) -> list[int] | list[list[int]]:
        if isinstance(texts, str):
            return self.processor.encode(texts, add_special_tokens=False).ids
        if threads == 1:  # one at a time: encode_batch would use the library's thread pool
            return [self.processor.encode(t, add_special_tokens=False).ids for t in texts]
        # encode_batch_fast: the library's threads, and no offsets to compute
        return [e.ids for e in self.processor.encode_batch_fast(list(texts), add_special_tokens=False)]

    def decode(self, ids) -> str:
        return self.processor.decode([int(i) for i in ids], skip_special_tokens=True)

    def byte_lengths(self) -> np.ndarray:
        return hf_byte_lengths(self.processor, self.vocab_size)

    def save(self, directory: str | Path) -> Path:
        """tokenizer.json, and a tokenizer_config.json naming the special tokens so that loading the
        copy gives the same ids (and transformers' AutoTokenizer can read the directory)."""
        directory = Path(directory)
        target = directory / FILE_NAME
        if target.resolve() == Path(self.path).resolve():
            return target
        directory.mkdir(parents=True, exist_ok=True)
        config = {"tokenizer_class": "PreTrainedTokenizerFast",
                  "eos_token": self.processor.id_to_token(self.eos_id),
                  "pad_token": self.processor.id_to_token(self.pad_id)}
        if self.bos_id >= 0:
            config["bos_token"] = self.processor.id_to_token(self.bos_id)
        (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")  # before the file it describes
        copy_atomically(self.path, target)
        return target


def _token_name(value, key: str, where: Path) -> str | None:
    if value is None or isinstance(value, str):
        return value or None
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise UserError(f"{where}: {key} must be a string or {{\"content\": ...}}, got {json.dumps(value)[:80]}")


def _configured_tokens(file: Path) -> dict[str, str | None]:
    """eos_token / bos_token / pad_token from tokenizer_config.json beside `file` (None: not named)."""
    config_path = file.parent / CONFIG_NAME
    if not config_path.is_file():
        return {}
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise UserError(f"{config_path} is not a readable JSON file") from None
    if not isinstance(config, dict):
        raise UserError(f"{config_path} is not a JSON object")
    return {key: _token_name(config.get(key), key, config_path) for key in ("eos_token", "bos_token", "pad_token")}


def _special_id(processor, configured: dict, key: str, names: tuple[str, ...], file: Path) -> int:
    """The id of the token tokenizer_config.json names for `key`, else of the first of `names`; -1."""
    name = configured.get(key)
    if name is not None:
        found = processor.token_to_id(name)
        if found is None:
            raise UserError(f"{file.parent / CONFIG_NAME}: {key} {name!r} is not in the tokenizer's vocab")
        return found
    for name in names:
        found = processor.token_to_id(name)
        if found is not None:
            return found
    return -1


def _parse(data: bytes, file: Path):
    """bytes -> tokenizers.Tokenizer, with a one-line UserError for anything that is not one."""
    try:
        import tokenizers
    except ImportError:
        raise UserError(f"reading {file.name} needs the tokenizers library: {_INSTALL}") from None
    try:
        spec = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UserError(f"tokenizer {file} is not valid JSON") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("model"), dict):
        raise UserError(f"{file} is not a Hugging Face tokenizer.json (no \"model\" section)")
    try:
        processor = tokenizers.Tokenizer.from_str(data.decode("utf-8"))
    except Exception as e:  # the library raises plain Exception with serde's message
        first = (str(e).strip().splitlines() or ["unknown error"])[0]
        raise UserError(f"tokenizer {file} cannot be loaded: {first[:200]}") from None
    processor.no_padding()  # the pipeline packs and pads itself; encode must return the bare ids
    processor.no_truncation()
    # A special token's text inside a document ("<|endoftext|>" in a web page) is text, as it is for
    # SentencePiece: otherwise it would end the document early and its bytes would count zero.
    processor.encode_special_tokens = True
    return processor


def load_hf_tokenizer(path: str | Path) -> HFTokenizer:
    """A tokenizer.json file, or a directory holding one."""
    path = Path(path).expanduser()
    file = path / FILE_NAME if path.is_dir() else path
    if path.is_dir() and not file.is_file():
        raise UserError(f"directory {path} has no {FILE_NAME}")
    data, sha256 = read_tokenizer_file(file)
    processor = _parse(data, file)
    vocab_size = processor.get_vocab_size(with_added_tokens=True)
    top = max(processor.get_vocab(with_added_tokens=True).values(), default=-1)
    if top >= vocab_size:
        raise UserError(f"tokenizer {file} has ids up to {top} but only {vocab_size} tokens (gaps in its ids)")
    configured = _configured_tokens(file)
    eos = _special_id(processor, configured, "eos_token", EOS_NAMES, file)
    if eos < 0:
        raise UserError(f"tokenizer {file} has no end-of-sequence token (name one as eos_token in "
                        f"{CONFIG_NAME} beside it, or have one of {', '.join(EOS_NAMES)})")
    pad = _special_id(processor, configured, "pad_token", PAD_NAMES, file)
    bos = _special_id(processor, configured, "bos_token", BOS_NAMES, file)
    return HFTokenizer(path=str(file), sha256=sha256, vocab_size=vocab_size, eos_id=eos,
                       pad_id=pad if pad >= 0 else eos, bos_id=bos, processor=processor)
