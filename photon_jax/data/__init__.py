"""Data, in two halves that share one contract:

    preparation/   offline: corpus readers and formats, work units, worker processes, the document split,
                   the merge; `prepare(data_cfg, out_dir, vocab_size) -> manifest` writes a data dir
    manifest.py    the data dir's manifest: `load_manifest(data_dir)`, format version, split names
    loading/       online: packing documents into windows, the grain pipelines (`train_iterator`,
                   `eval_batches`, `to_global_batch`), weighted mixtures of data dirs

The loading half reaches no preparation module (tests/test_layout.py), so training and evaluation
never import the corpus readers or the worker pool. Tokenizers live in photon_jax.tokenizers.

Only the manifest's names are re-exported here: every `prepare` worker process
(`python -m photon_jax.data.preparation.unit_worker`) runs this file, and re-exporting the loading
half would make each of them import jax and grain (about 3 s and 180 MiB more per worker), while
re-exporting the preparation half would make training import the corpus readers. Import the other
names from their modules.
"""

from __future__ import annotations

from photon_jax.data.manifest import FORMAT_VERSION, SPLITS, load_manifest

__all__ = ["FORMAT_VERSION", "SPLITS", "load_manifest"]
