"""Packing prepared documents into fixed windows, as a random-access grain MapDataset.

An epoch is the split's documents (each already ending in EOS) concatenated in a
seeded shuffled order and cut into W = ceil(T / seq_len) windows; a document
longer than a window simply continues into the next one, and only the last
window is partial (padded with the pad id, mask 0 exactly on the padding).
Training visits the windows of an epoch in a second seeded permutation, so every
token of the epoch is seen exactly once; epoch e draws both orders from the seed
sequence (seed, e). Evaluation (seed=None) uses the stored document order and the
windows in order, and returns all-padding windows past the end.

Windows are computed on demand from the per-document lengths (lengths.npy) and the
ArrayRecord records, with a bounded LRU cache of decoded documents, so any window
of any epoch is available in O(documents it touches) without replaying the stream.
"""

from __future__ import annotations

import collections
import math
import threading
from pathlib import Path

import grain
import numpy as np

from photon_jax.data.manifest import load_manifest
from photon_jax.errors import UserError

_DOC_CACHE_TOKENS = 32 << 20  # decoded documents kept per process/worker (int32: 128 MiB)

def _allow_open_files(shards: int) -> None:
    """grain keeps one open reader per shard (and per split): lift the soft open-file limit towards the
    hard one when a prepared dir has more shards than the soft limit comfortably allows."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * shards + 256
    if soft == resource.RLIM_INFINITY or soft >= want:
        return
    target = want if hard == resource.RLIM_INFINITY else min(hard, want)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


class SplitSource:
    """Random access to the documents (token arrays, EOS included) of one prepared split: document i is
    record records[i] of the data dir's shards (read in order as one ArrayRecord source)."""

    def __init__(self, data_dir: str | Path, split: str, manifest: dict | None = None):
        root = Path(data_dir).expanduser()
        manifest = manifest or load_manifest(root)
        info = manifest["splits"].get(split)
        if info is None:
            raise UserError(f"data dir {root} has no split {split!r} (has: {', '.join(manifest['splits'])})")
        if info["documents"] == 0:
            raise UserError(f"split {split!r} of {root} is empty (the corpus has too few documents)")
        try:
            self.lengths = np.load(root / info["lengths"]).astype(np.int64)
            self.record_ids = np.load(root / info["records"]).astype(np.int64)
        except (OSError, ValueError) as e:
            raise UserError(f"{root / split} has an unreadable index ({e}); run photon-jax prepare --force") from None
        if len(self.lengths) != info["documents"] or int(self.lengths.sum()) != info["tokens"] \
                or len(self.record_ids) != len(self.lengths):
            raise UserError(f"{root / split} index files do not match manifest.json; run photon-jax prepare --force")
        missing = [p for p in manifest["shards"] if not (root / p).is_file()]
        if missing:
            raise UserError(f"data dir {root} is missing {missing[0]}; run photon-jax prepare --force")
        self.paths = [str(root / p) for p in manifest["shards"]]
        _allow_open_files(len(self.paths))
        self.dtype = np.dtype(manifest["token_dtype"]).newbyteorder("<")
        self.pad_id = int(manifest["pad_id"])
        self.fingerprint = manifest["fingerprint"]
        self.tokens = int(info["tokens"])
        self._reset()

    def _reset(self) -> None:
        self._records = None
        self._cache: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._cached_tokens = 0
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:  # picklable for grain worker processes
        state = dict(self.__dict__)
        for key in ("_records", "_cache", "_lock", "_cached_tokens"):
            state.pop(key)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    def __len__(self) -> int:
        return len(self.lengths)

    def doc(self, index: int) -> np.ndarray:
        with self._lock:
            hit = self._cache.get(index)
            if hit is not None:
                self._cache.move_to_end(index)
                return hit
            if self._records is None:
                self._records = grain.sources.ArrayRecordDataSource(self.paths)
        tokens = np.frombuffer(self._records[int(self.record_ids[index])], dtype=self.dtype).astype(np.int32)
        if len(tokens) != self.lengths[index]:
            raise UserError(f"record {self.record_ids[index]} of {self.paths[0]}... has {len(tokens)} tokens, "
                            f"lengths.npy says {self.lengths[index]}; run photon-jax prepare --force")
        with self._lock:
            if index not in self._cache and len(tokens) <= _DOC_CACHE_TOKENS:
                self._cache[index] = tokens
                self._cached_tokens += len(tokens)
                while self._cached_tokens > _DOC_CACHE_TOKENS:
                    self._cached_tokens -= len(self._cache.popitem(last=False)[1])
        return tokens


def _rng(seed: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng([seed % (1 << 64), epoch])


ENDLESS_WINDOWS = 1 << 62  # length of a training stream: never reached, and still a valid len()


class WindowStream(grain.MapDataset):
    """The global window stream of one split: element k is window k, {"tokens": int32[L], "mask": float32[L]}.

    Training (seed set): endless, epoch k // W in its own seeded order. Evaluation (seed=None): the
    stored order, then all-padding windows. The same for every process; ProcessRows slices it.
    """

    def __init__(self, source: SplitSource, seq_len: int, seed: int | None, length: int = ENDLESS_WINDOWS):
        super().__init__()
        self.source, self.seq_len, self.seed, self.length = source, seq_len, seed, length
        self.windows_per_epoch = math.ceil(source.tokens / seq_len)
        self._epochs: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_epochs"], state["_lock"] = {}, None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.length

    def __str__(self) -> str:
        return f"WindowStream(seq_len={self.seq_len}, seed={self.seed})"

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        return self.window(int(index))

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(document order, start offset of each ordered document, window permutation or None)."""
        with self._lock:
            cached = self._epochs.get(epoch)
            if cached is not None:
                return cached
            n = len(self.source)
            if self.seed is None:
                order, windows = np.arange(n), None
            else:
                rng = _rng(self.seed, epoch)
                order, windows = rng.permutation(n), rng.permutation(self.windows_per_epoch)
            starts = np.concatenate([[0], np.cumsum(self.source.lengths[order])[:-1]])
            if len(self._epochs) >= 2:
                self._epochs.pop(min(self._epochs))
            self._epochs[epoch] = (order, starts, windows)
            return self._epochs[epoch]

    def window(self, k: int) -> dict[str, np.ndarray]:
        """Global window k of the stream."""
        seq_len = self.seq_len
        tokens = np.full(seq_len, self.source.pad_id, np.int32)
        mask = np.zeros(seq_len, np.float32)
        epoch, position = divmod(k, self.windows_per_epoch)
        if self.seed is None and epoch > 0:
            return {"tokens": tokens, "mask": mask}  # evaluation padding row
        order, starts, windows = self._epoch(epoch)
        if windows is not None:
            position = int(windows[position])
        begin = position * seq_len
        end = min(begin + seq_len, self.source.tokens)
        j = int(np.searchsorted(starts, begin, side="right")) - 1
        pos = begin
        while pos < end:
            doc = self.source.doc(int(order[j]))
            skip = pos - int(starts[j])
            take = min(len(doc) - skip, end - pos)
            tokens[pos - begin:pos - begin + take] = doc[skip:skip + take]
            pos += take
            j += 1
        mask[:end - begin] = 1.0
        return {"tokens": tokens, "mask": mask}

    def tokens_before(self, count: int) -> int:
        """Real (mask 1) tokens in windows [0, count), from the window order alone (no document is read):
        every window is full except the epoch's last one, which holds T - (W - 1) * L tokens."""
        epoch, position = divmod(count, self.windows_per_epoch)
        if self.seed is None:
            return self.source.tokens if epoch else min(position * self.seq_len, self.source.tokens)
        total = epoch * self.source.tokens + position * self.seq_len
        if position:
            last = self.windows_per_epoch - 1
            windows = self._epoch(epoch)[2]
            if last in windows[:position]:
                total -= last * self.seq_len + self.seq_len - self.source.tokens  # the short window's padding
        return total


class ProcessRows(grain.MapDataset):
    """This process's rows of consecutive global batches of a window stream.

    Local element i = (step s, row r) is global window start + s * B + p * (B/n) + r: process p of n takes
    the contiguous rows [p * B/n, (p + 1) * B/n) of every global batch of B windows.
    """

    def __init__(self, windows: grain.MapDataset, *, start: int, global_batch: int, process_index: int,
                 process_count: int, steps: int):
        super().__init__(windows)
        self.windows, self.start, self.steps = windows, start, steps
        self.global_batch, self.local_batch = global_batch, global_batch // process_count
        self.offset = process_index * self.local_batch

    def __len__(self) -> int:
        return self.steps * self.local_batch

    def __str__(self) -> str:
        return f"ProcessRows(start={self.start}, global_batch={self.global_batch}, offset={self.offset})"

    def global_index(self, index: int) -> int:
        step, row = divmod(index, self.local_batch)
        return self.start + step * self.global_batch + self.offset + row

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        return self.windows[self.global_index(int(index))]
