"""Log-likelihood of scored spans, batched into a few fixed shapes, for every model family.

A request is a token sequence and the number of its last tokens to score: the summed log-probability
of those tokens given everything before them, and whether each is the arg-max prediction (the
harness's `is_greedy`). Every sequence starts with the document boundary token (EOS), because that is
what precedes every document in training (data/loading/packing.py), so an empty context is just [EOS].

Batching: requests are sorted by length (longest first), cut into batches of `batch_size` rows, and
each batch is right-padded to a width from a short ladder (16 tokens, rounded up to the meta-context,
times a power of two, capped at the model's context), so a whole task compiles a handful of programs
(4 for the tiny presets' 128-token context: widths 16, 32, 64, 128). Right padding and filler rows
cannot change a row's scores: every family is causal (tests prove it by perturbation), and the scored
positions are read only where the row is real.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from photon_jax.config import ModelConfig
from photon_jax.errors import UserError
from photon_jax.model import build_model
from photon_jax.model.losses import target_logits


@dataclasses.dataclass(frozen=True)
class Span:
    """Score the last `scored` tokens of `tokens` (1 <= scored < len(tokens))."""

    tokens: tuple[int, ...]
    scored: int


def context_continuation_span(encode, boundary_id: int, context: str, continuation: str, max_len: int) -> Span:
    """(context, continuation) text -> Span, tokenized as the harness's reference models do.

    Trailing whitespace of the context moves to the continuation; the pair is encoded whole and split
    where the context's own encoding ends, so the continuation's tokens are the ones the model sees in
    the joined text; when a merge crosses the boundary, the two parts are encoded apart instead. The
    sequence is truncated from the left to the model's context `max_len`."""
    stripped = context.rstrip()
    continuation = context[len(stripped):] + continuation
    context_ids = list(encode(stripped)) if stripped else []
    whole = list(encode(stripped + continuation))
    if whole[: len(context_ids)] == context_ids and len(whole) > len(context_ids):
        continuation_ids = whole[len(context_ids):]
    else:
        continuation_ids = list(encode(continuation))
    if not continuation_ids:
        raise UserError(f"continuation {continuation!r} encodes to no tokens")
    tokens = ([boundary_id] + context_ids + continuation_ids)[-max_len:]
    return Span(tuple(tokens), min(len(continuation_ids), len(tokens) - 1))


def rolling_spans(token_ids: list[int], boundary_id: int, max_len: int) -> list[Span]:
    """A whole document as windows of at most `max_len` tokens that score each token exactly once.

    The first window is [boundary] + the first max_len - 1 tokens (all scored); every later window
    scores the next max_len - 1 tokens (fewer in the last) and is filled on the left with the tokens
    just before them, so every prediction sees as much context as the model's window allows."""
    if max_len < 2:
        raise UserError(f"a rolling window needs a context of at least 2 tokens, got {max_len}")
    ids = list(token_ids)
    if not ids:
        return []
    first = min(len(ids), max_len - 1)
    spans = [Span(tuple([boundary_id] + ids[:first]), first)]
    done = first
    while done < len(ids):
        count = min(len(ids) - done, max_len - 1)
        end = done + count
        start = max(0, end - max_len)
        window = ids[start:end]
        spans.append(Span(tuple(window), count))
        done = end
    return spans


MIN_WIDTH = 16  # the narrowest padded batch (rounded up to the meta-context): short rows cost little anyway


def width_ladder(unit: int, max_len: int) -> list[int]:
    """Padded widths: w0 * 2^k below the context, then the context rounded up to `unit` (the
    meta-context, the granularity every family accepts); w0 = MIN_WIDTH rounded up to `unit`."""
    top = -(-max_len // unit) * unit
    widths, w = [], -(-MIN_WIDTH // unit) * unit
    while w < top:
        widths.append(w)
        w *= 2
    return widths + [top]


def pick_width(length: int, ladder: list[int]) -> int:
    return next(w for w in ladder if w >= length)


@dataclasses.dataclass(frozen=True)
class Batch:
    """One padded batch: rows of requests `index` (filler rows have index -1)."""

    tokens_bt: np.ndarray
    lengths_b: np.ndarray
    scored_b: np.ndarray
    index: tuple[int, ...]


def plan_batches(spans: list[Span], batch_size: int, ladder: list[int], pad_id: int) -> list[Batch]:
    """Longest first; each batch padded to the ladder width of its longest row and to `batch_size` rows."""
    order = sorted(range(len(spans)), key=lambda i: (-len(spans[i].tokens), i))
    batches = []
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        width = pick_width(len(spans[rows[0]].tokens), ladder)
        tokens = np.full((batch_size, width), pad_id, np.int32)
        lengths = np.full((batch_size,), 2, np.int32)  # filler rows score one padding token, ignored
        scored = np.ones((batch_size,), np.int32)
        for r, i in enumerate(rows):
            seq = spans[i].tokens
            tokens[r, : len(seq)] = seq
            lengths[r], scored[r] = len(seq), spans[i].scored
        batches.append(Batch(tokens, lengths, scored, tuple(rows) + (-1,) * (batch_size - len(rows))))
    return batches


def make_span_scorer(cfg: ModelConfig):
    """(params, tokens_bt, lengths_b, scored_b) -> (log-likelihood_b, all-greedy_b) in fp32.

    Target j of a row is tokens[j + 1]; the scored targets of a row are j in [length - 1 - scored,
    length - 1)."""
    model = build_model(cfg)

    def score(params, tokens_bt, lengths_b, scored_b):
        logits = target_logits(cfg, model.apply({"params": params}, tokens_bt)[0]).astype(jnp.float32)
        targets_bt = tokens_bt[:, 1:]
        logp_bt = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), targets_bt[..., None], axis=-1)[..., 0]
        greedy_bt = jnp.argmax(logits, axis=-1) == targets_bt
        j = jnp.arange(targets_bt.shape[1])[None, :]
        last = lengths_b[:, None] - 1
        in_span = (j >= last - scored_b[:, None]) & (j < last)
        loglik_b = jnp.sum(jnp.where(in_span, logp_bt, 0.0), axis=1)
        greedy_b = jnp.all(greedy_bt | ~in_span, axis=1)
        return loglik_b, greedy_b

    return score


class SpanScorer:
    """Scores Spans with params kept where they are (sharded on `mesh`); one program per batch width.

    `run_batch` is what every process executes for one batch (the multi-process driver in
    harness.py calls it on all processes with the same batch)."""

    def __init__(self, cfg: ModelConfig, params, max_len: int, batch_size: int, pad_id: int,
                 mesh=None, batch_sharding=None):
        self.cfg, self.params, self.max_len, self.pad_id = cfg, params, max_len, pad_id
        self.batch_size = batch_size
        self.ladder = width_ladder(cfg.meta_context, max_len)
        self.mesh, self.in_sharding = mesh, batch_sharding
        out = None if mesh is None else NamedSharding(mesh, PartitionSpec())
        self.program = jax.jit(make_span_scorer(cfg), out_shardings=out)
        self.widths_run: set[int] = set()

    def _global(self, host: np.ndarray):
        if self.in_sharding is None:
            return jnp.asarray(host)
        spec = self.in_sharding.spec[: host.ndim]
        sharding = NamedSharding(self.in_sharding.mesh, PartitionSpec(*spec))
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    def run_batch(self, tokens_bt: np.ndarray, lengths_b: np.ndarray, scored_b: np.ndarray):
        self.widths_run.add(tokens_bt.shape[1])
        loglik_b, greedy_b = self.program(self.params, self._global(tokens_bt), self._global(lengths_b),
                                          self._global(scored_b))
        return np.asarray(loglik_b, np.float64), np.asarray(greedy_b, bool)

    def check(self, spans: list[Span]) -> None:
        for s in spans:
            if not 1 <= s.scored < len(s.tokens) or len(s.tokens) > self.max_len:
                raise UserError(f"a request of {len(s.tokens)} tokens scoring {s.scored} does not fit the model's "
                                f"context of {self.max_len} tokens")

    def score(self, spans: list[Span], run_batch=None, progress=None) -> list[tuple[float, bool]]:
        """(log-likelihood, is_greedy) per span, in input order."""
        self.check(spans)
        run_batch = run_batch or self.run_batch
        results: list[tuple[float, bool] | None] = [None] * len(spans)
        for batch in plan_batches(spans, self.batch_size, self.ladder, self.pad_id):
            loglik_b, greedy_b = run_batch(batch.tokens_bt, batch.lengths_b, batch.scored_b)
            for row, i in enumerate(batch.index):
                if i >= 0:
                    results[i] = (float(loglik_b[row]), bool(greedy_b[row]))
            if progress is not None:
                progress(sum(i >= 0 for i in batch.index))
        return results
