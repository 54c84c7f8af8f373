"""Data, in two halves that share one contract:

    preparation/   offline: corpus readers and formats, work units, worker processes, the document split,
                   the merge; `prepare(data_cfg, out_dir, vocab_size) -> manifest` writes a data dir
    manifest.py    the data dir's manifest: `load_manifest(data_dir)`, format version, split names
    loading/       online: packing documents into windows, the grain pipelines (`train_iterator`,
                   `eval_batches`, `to_global_batch`), weighted mixtures of data dirs

The loading half reaches no preparation module (tests/test_layout.py), so training and evaluation
never import the corpus readers or the worker pool. Tokenizers live in photon_jax.tokenizers.
Names are imported lazily so that `photon-jax prepare` does not pay for importing grain.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "load_manifest": "manifest", "split_documents": "preparation.prepare",
    "train_iterator": "loading.pipeline", "eval_batches": "loading.pipeline", "to_global_batch": "loading.pipeline",
    "TrainIterator": "loading.pipeline", "EvalBatches": "loading.pipeline",
    "Document": "preparation.corpus", "iter_documents": "preparation.formats", "read_corpus": "preparation.formats",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
