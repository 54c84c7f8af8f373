"""Data: corpus reading, tokenizers (SentencePiece, tokenizer.json), `prepare` into ArrayRecord shards, grain pipeline.

    prepare(data_cfg, out_dir, vocab_size) -> manifest          (photon_jax.data.prepare.prepare; the
                                                                name `prepare` here is the submodule)
    train_iterator(data_dir, seq_len, global_batch, seed, ...)  (photon_jax.data.pipeline)
    eval_batches(data_dir, split, seq_len, batch_size, ...)
    load_manifest(data_dir), to_global_batch(batch, sharding)
    load_tokenizer(path), token_byte_lengths(tokenizer), check_vocab(tokenizer, expected)
    byte_accounting_check(tokenizer, texts)                     (photon_jax.data.tokenizer)

Names are imported lazily so that `photon-jax prepare` does not pay for importing grain.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "load_manifest": "prepare", "split_documents": "prepare",
    "train_iterator": "pipeline", "eval_batches": "pipeline", "to_global_batch": "pipeline",
    "TrainIterator": "pipeline", "EvalBatches": "pipeline",
    "Tokenizer": "tokenizer", "load_tokenizer": "tokenizer", "train_tokenizer": "tokenizer",
    "token_byte_lengths": "tokenizer", "check_vocab": "tokenizer", "byte_accounting_check": "tokenizer",
    "Document": "corpus", "iter_documents": "formats", "read_corpus": "formats",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
