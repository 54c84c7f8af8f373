"""Weighted mixtures of prepared data dirs (data.mixture) as one deterministic, resumable window stream.

Sources. Each "PATH:WEIGHT" entry is a prepared data dir; its train split is its own endless stream
of packed windows (packing.WindowStream: seeded epochs, exactly the stream a run on that dir alone
would see). All sources must share one tokenizer.

Index map (ProportionalInterleave). The weights become exact integer proportions p_i with sum S, and
mixture window k is window j of source i, where source 0 owns position k iff
ceil((k + 1) p_0 / S) > ceil(k p_0 / S) (so it owns ceil(k p_0 / S) of the first k positions,
spread as evenly as possible), and the positions it does not own, renumbered in order, are shared
by sources 1, 2, ... by the same rule with total S - p_0. It is a pure function of k: random access,
no replay, the same on every process, and "windows of source i among the first k" is a closed form
in O(sources), which the per-source token counts use. Every prefix holds each source's share to
within a few windows (test_mixture.py checks < number of sources).

Why not grain.MapDataset.mix: it uses this same rule (and endless sources are fine there, given a
huge length), but it rounds the weights to int(w * 100 / min(w)), so 0.7:0.3 would become 233:100,
and it does not expose the prefix count. The map plugs into grain through the public
MapDataset.select_from_datasets, which mix itself is built on. There is no randomness in the
interleave: each source's windows are already in a seeded order, and a fixed interleave gives every
global batch its share.

State: next_window (as for one dir, pipeline.py), the seed, seq_len and per source its name,
fingerprint and proportion; resuming with other sources, weights or seq_len is one-line UserError.
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from pathlib import Path
from typing import Any

import grain

from photon_jax.config import parse_mixture
from photon_jax.data.loading.packing import ENDLESS_WINDOWS, SplitSource, WindowStream
from photon_jax.data.loading.pipeline import StreamIterator
from photon_jax.data.manifest import load_manifest
from photon_jax.errors import UserError

__all__ = ["MixtureSource", "load_sources", "ProportionalInterleave", "MixtureIterator", "weighted_metrics"]

MIXTURE_STATE_FORMAT = "photon-jax-mixture-iterator"


@dataclasses.dataclass(frozen=True)
class MixtureSource:
    name: str  # unique; used in metric names (tokens/<name>, validation/<name>)
    data_dir: Path
    weight: Fraction
    manifest: dict


def source_names(dirs: list[Path]) -> list[str]:
    """Each dir's basename, with _2, _3, ... appended to repeats."""
    names: list[str] = []
    for d in dirs:
        base = d.name or "data"
        name, n = base, 1
        while name in names:
            n += 1
            name = f"{base}_{n}"
        names.append(name)
    return names


def load_sources(entries: tuple[str, ...]) -> list[MixtureSource]:
    """data.mixture entries -> sources with their manifests; every dir prepared, one shared tokenizer."""
    parsed = parse_mixture(entries)
    if not parsed:
        raise UserError("data.mixture is empty")
    manifests = []
    for data_dir, _ in parsed:
        if not (data_dir / "manifest.json").is_file():
            raise UserError(f"{data_dir} is not a prepared data dir; run photon-jax prepare --out {data_dir}")
        manifests.append(load_manifest(data_dir))
    first_dir, first_sha = parsed[0][0], manifests[0]["tokenizer"]["sha256"]
    for (data_dir, _), manifest in zip(parsed, manifests):
        sha = manifest["tokenizer"]["sha256"]
        if sha != first_sha:
            raise UserError(f"data.mixture: {first_dir} and {data_dir} have different tokenizers "
                            f"(sha256 {first_sha[:12]} != {sha[:12]}); prepare every source with one data.tokenizer")
    names = source_names([d for d, _ in parsed])
    return [MixtureSource(name, d, w, m) for name, (d, w), m in zip(names, parsed, manifests)]


def proportions(weights: list[Fraction]) -> tuple[int, ...]:
    """Exact weights -> the smallest integers in the same ratio."""
    scale = math.lcm(*(w.denominator for w in weights))
    ints = [int(w * scale) for w in weights]
    common = math.gcd(*ints)
    return tuple(i // common for i in ints)


class ProportionalInterleave(grain.transforms.DatasetSelectionMap):
    """Mixture window k -> (source i, window j of source i's stream); see the module docstring."""

    def __init__(self, proportions: tuple[int, ...], length: int = ENDLESS_WINDOWS):
        if not proportions or min(proportions) <= 0:
            raise ValueError(f"proportions must be positive integers, got {proportions}")
        self.proportions, self.length = tuple(int(p) for p in proportions), length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, k: int) -> tuple[int, int]:
        remaining = sum(self.proportions)
        for i, p in enumerate(self.proportions):
            owned_before = -(-k * p // remaining)  # ceil(k p / remaining): positions before k it owns
            if -(-(k + 1) * p // remaining) > owned_before:
                return i, owned_before
            k -= owned_before  # k's position among the positions the later sources share
            remaining -= p
        raise AssertionError("unreachable: the last source owns every remaining position")

    def counts(self, k: int) -> list[int]:
        """Windows of each source among mixture windows [0, k)."""
        remaining, out = sum(self.proportions), []
        for p in self.proportions:
            owned = -(-k * p // remaining)
            out.append(owned)
            k -= owned
            remaining -= p
        return out


class MixtureIterator(StreamIterator):
    """Endless local batches {"tokens": int32[b, L], "mask": float32[b, L]} of the weighted mixture."""

    state_format = MIXTURE_STATE_FORMAT
    what = "data.mixture iterator"

    def __init__(self, sources: list[MixtureSource], seq_len: int, global_batch: int, seed: int,
                 process_index: int = 0, process_count: int = 1, worker_count: int = 0):
        super().__init__(seq_len, global_batch, process_index, process_count, worker_count)
        self.sources, self.seed = list(sources), int(seed)
        self.splits = [SplitSource(s.data_dir, "train", s.manifest) for s in self.sources]
        self.interleave = ProportionalInterleave(proportions([s.weight for s in self.sources]))
        # separate streams for counting, so the metrics share no epoch cache or lock with the data threads
        self._counters = [WindowStream(split, seq_len, self.seed) for split in self.splits]

    def _windows(self) -> grain.MapDataset:
        streams = [WindowStream(split, self.seq_len, self.seed) for split in self.splits]
        return grain.MapDataset.select_from_datasets(streams, self.interleave)

    def _identity(self) -> dict[str, Any]:
        return {"seed": self.seed, "seq_len": self.seq_len,
                "sources": [{"name": s.name, "fingerprint": split.fingerprint, "proportion": p}
                            for s, split, p in zip(self.sources, self.splits, self.interleave.proportions)]}

    def _check_identity(self, state: dict[str, Any]) -> None:
        saved, now = state.get("sources"), self._identity()["sources"]

        def describe(sources: list[dict], key: str) -> str:
            return ", ".join(f"{s.get('name')}:{s.get(key)}" for s in sources)

        if not isinstance(saved, list) or not all(isinstance(s, dict) for s in saved):
            raise UserError("saved data iterator state has no valid data.mixture sources")
        if [s.get("fingerprint") for s in saved] != [s["fingerprint"] for s in now]:
            raise UserError(f"saved data iterator state mixes other data ({describe(saved, 'fingerprint')[:200]}) "
                            f"than this run's data.mixture ({describe(now, 'fingerprint')[:200]}); "
                            f"same dirs in the same order, or a fresh --workdir")
        if [s.get("proportion") for s in saved] != [s["proportion"] for s in now]:
            raise UserError(f"saved data iterator state has mixture proportions {describe(saved, 'proportion')} "
                            f"but this run has {describe(now, 'proportion')}")
        for key in ("seed", "seq_len"):
            if state.get(key) != getattr(self, key):
                raise UserError(f"saved data iterator state has {key}={state.get(key)!r} "
                                f"but this run has {getattr(self, key)!r}")

    def token_counts(self) -> dict[str, int]:
        """{"tokens/<name>": real (unmasked) tokens drawn from each source so far}, from the index map alone."""
        counts = self.interleave.counts(self.next_window)
        return {f"tokens/{s.name}": stream.tokens_before(n)
                for s, stream, n in zip(self.sources, self._counters, counts)}

    @property
    def epochs(self) -> dict[str, float]:
        """Epochs of each source consumed so far (fractional)."""
        counts = self.interleave.counts(self.next_window)
        return {s.name: n / stream.windows_per_epoch for s, stream, n in zip(self.sources, self._counters, counts)}

    @property
    def epoch(self) -> float:
        """Epochs consumed of the most repeated source."""
        return max(self.epochs.values())


def weighted_metrics(results: list[dict], weights: list[Fraction]) -> dict:
    """One set of validation metrics from per-source ones: losses and bits per byte averaged with the
    mixture weights, perplexity = exp(averaged loss), target and byte counts summed."""
    shares = [float(w / sum(weights)) for w in weights]
    out = {}
    for key in results[0]:
        values = [r[key] for r in results if key in r]
        if len(values) != len(results):
            continue
        if key in ("targets", "bytes"):
            out[key] = float(sum(values))
        else:
            out[key] = float(sum(s * v for s, v in zip(shares, values)))
    if "token_loss" in out:
        out["perplexity"] = math.exp(min(out["token_loss"], 50.0))
    return out
