"""Grain input pipeline over prepared shards: per-process batches and resumable state.

Packing is in photon_jax.data.loading.packing: documents concatenated in a seeded order
with EOS between them, cut into seq_len windows without truncating documents,
windows visited in a seeded order, reshuffled every epoch.

Global order and sharding. Training is one infinite stream of windows
k = 0, 1, 2, ... (epoch k // W, position k % W), so no window is dropped: a global
batch may straddle an epoch boundary. Global step s uses windows
[s * B, (s + 1) * B) for global batch B; process p of n takes the contiguous rows
[p * B/n, (p + 1) * B/n), which is what jax.make_array_from_process_local_data
expects for a batch axis sharded in process order. Processes are disjoint and
together cover every window. Evaluation slices each global batch the same way;
rows past the last window are all padding (mask 0), so every process yields the
same number of batches.

State. The iterator state is a small JSON dict whose core is `next_window`, the
global index of the first window not yet handed out. It is identical on every
process and independent of the process count, batch size and worker count, so the
trainer can store it with ocp.args.JsonSave from any process and resume on a
different topology. Restoring rebuilds the grain pipeline from that window (the
window dataset is random access, so nothing is replayed) instead of using grain's
own iterator state, whose meaning depends on the worker count and batch size.

grain pieces: a WindowStream MapDataset (one split's global windows, or a weighted mixture
of several, mixture.py) sliced per process by ProcessRows, `.batch`, `.to_iter_dataset`
with two prefetch threads, and `.mp_prefetch` worker processes when worker_count > 0
(absl flags are marked parsed first, as grain requires).
"""

from __future__ import annotations

import abc
import math
from typing import Any

import grain
import numpy as np

from photon_jax.data.loading.packing import ProcessRows, SplitSource, WindowStream
from photon_jax.data.manifest import load_manifest
from photon_jax.errors import UserError

__all__ = ["train_iterator", "eval_batches", "load_manifest", "to_global_batch", "StreamIterator", "TrainIterator",
           "EvalBatches"]

STATE_FORMAT = "photon-jax-train-iterator"
STATE_VERSION = 1
_ENDLESS_STEPS = 1 << 40


def _check_layout(seq_len: int, global_batch: int, process_index: int, process_count: int) -> None:
    if seq_len < 2:
        raise UserError(f"seq_len must be >= 2, got {seq_len}")
    if global_batch <= 0:
        raise UserError(f"batch size must be > 0, got {global_batch}")
    if process_count <= 0 or not 0 <= process_index < process_count:
        raise UserError(f"process index {process_index} is not in [0, {process_count})")
    if global_batch % process_count:
        raise UserError(f"global batch {global_batch} is not divisible by the process count {process_count}")


def _ensure_absl_flags() -> None:
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _iterate(rows: ProcessRows, worker_count: int, drop_remainder: bool):
    ds = rows.batch(rows.local_batch, drop_remainder=drop_remainder)
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4))
    if worker_count > 0:
        _ensure_absl_flags()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return iter(ds)


class StreamIterator(abc.ABC):
    """Endless local batches {"tokens": int32[b, L], "mask": float32[b, L]} of a global window stream.

    Subclasses give the stream (`_windows`, a random-access grain MapDataset) and what a saved state must
    match (`_identity`); the position, batching, process slicing and state are handled here.
    """

    state_format = STATE_FORMAT
    what = "train iterator"

    def __init__(self, seq_len: int, global_batch: int, process_index: int = 0, process_count: int = 1,
                 worker_count: int = 0):
        _check_layout(seq_len, global_batch, process_index, process_count)
        self.seq_len, self.global_batch = seq_len, global_batch
        self.process_index, self.process_count, self.worker_count = process_index, process_count, worker_count
        self.next_window = 0
        self._it = None

    @abc.abstractmethod
    def _windows(self) -> grain.MapDataset:
        """The global window stream (each subclass's source of windows)."""

    @abc.abstractmethod
    def _identity(self) -> dict[str, Any]:
        """State fields a resumed run must have unchanged."""

    def _check_identity(self, state: dict[str, Any]) -> None:
        for key, now in self._identity().items():
            if state.get(key) != now:
                raise UserError(f"saved data iterator state has {key}={state.get(key)!r} but this run has {now!r}")

    def __iter__(self) -> "StreamIterator":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._it is None:  # built lazily, so set_state right after construction wastes no prefetch
            rows = ProcessRows(self._windows(), start=self.next_window, global_batch=self.global_batch,
                               process_index=self.process_index, process_count=self.process_count,
                               steps=_ENDLESS_STEPS)
            self._it = _iterate(rows, self.worker_count, drop_remainder=True)
        batch = next(self._it)
        self.next_window += self.global_batch
        return batch

    def get_state(self) -> dict[str, Any]:
        return {"format": self.state_format, "version": STATE_VERSION, "next_window": self.next_window,
                **self._identity()}

    def set_state(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("format") != self.state_format:
            raise UserError(f"saved data iterator state is not a photon-jax {self.what} state")
        if state.get("version") != STATE_VERSION:
            raise UserError(f"saved data iterator state has version {state.get('version')}, expected {STATE_VERSION}")
        self._check_identity(state)
        next_window = state.get("next_window")
        if not isinstance(next_window, int) or next_window < 0:
            raise UserError(f"saved data iterator state has a bad next_window {next_window!r}")
        self.close()
        self.next_window = next_window

    def close(self) -> None:
        if self._it is not None and hasattr(self._it, "close"):
            self._it.close()
        self._it = None


class TrainIterator(StreamIterator):
    """The training stream of one prepared data dir."""

    def __init__(self, data_dir, seq_len: int, global_batch: int, seed: int, process_index: int = 0,
                 process_count: int = 1, worker_count: int = 0):
        super().__init__(seq_len, global_batch, process_index, process_count, worker_count)
        self.source = SplitSource(data_dir, "train")
        self.seed = int(seed)
        self.windows_per_epoch = math.ceil(self.source.tokens / seq_len)

    def _windows(self) -> WindowStream:
        return WindowStream(self.source, self.seq_len, self.seed)

    def _identity(self) -> dict[str, Any]:
        return {"seed": self.seed, "seq_len": self.seq_len, "data_fingerprint": self.source.fingerprint}

    @property
    def epoch(self) -> float:
        """Epochs consumed so far (fractional)."""
        return self.next_window / self.windows_per_epoch


class EvalBatches:
    """A finite pass over a split's windows in stored order; the last batch is padded with masked rows."""

    def __init__(self, data_dir, split: str, seq_len: int, batch_size: int, max_batches: int | None = None,
                 process_index: int = 0, process_count: int = 1):
        _check_layout(seq_len, batch_size, process_index, process_count)
        source = SplitSource(data_dir, split)
        total = math.ceil(math.ceil(source.tokens / seq_len) / batch_size)
        self.num_batches = total if max_batches is None else max(0, min(total, max_batches))
        rows = ProcessRows(WindowStream(source, seq_len, None), start=0, global_batch=batch_size,
                           process_index=process_index, process_count=process_count, steps=self.num_batches)
        self._it = _iterate(rows, 0, drop_remainder=False) if self.num_batches else iter(())

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> "EvalBatches":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        try:
            return next(self._it)
        except StopIteration:
            self.close()
            raise

    def close(self) -> None:
        """Stop the prefetch threads (also done when the pass ends)."""
        if hasattr(self._it, "close"):
            self._it.close()
        self._it = iter(())


def train_iterator(data_dir, seq_len: int, global_batch: int, seed: int, process_index: int = 0,
                   process_count: int = 1, worker_count: int = 0) -> TrainIterator:
    return TrainIterator(data_dir, seq_len, global_batch, seed, process_index, process_count, worker_count)


def eval_batches(data_dir, split: str, seq_len: int, batch_size: int, max_batches: int | None = None,
                 process_index: int = 0, process_count: int = 1) -> EvalBatches:
    return EvalBatches(data_dir, split, seq_len, batch_size, max_batches, process_index, process_count)


def to_global_batch(batch: dict[str, np.ndarray], sharding) -> dict:
    """Process-local batch -> global jax.Arrays (`sharding`: one Sharding, or a dict of them per key)."""
    import jax

    def one(key, value):
        target = sharding[key] if isinstance(sharding, dict) else sharding
        return jax.make_array_from_process_local_data(target, np.asarray(value))

    return {key: one(key, value) for key, value in batch.items()}
