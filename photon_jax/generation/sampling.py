"""Token sampling: greedy, temperature, top-k, top-p; one PRNG key per row and position.

The key of the token at absolute position t of row r is fold_in(fold_in(key(seed), r), t),
so a row's samples do not depend on the batch it runs in, on when other rows stop, or on
whether its prompt cache is shared with other samples (multiquery.py).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from photon_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """The one set of sampling defaults: the API, `photon-jax generate` and `photon-jax run` use these."""

    temperature: float = 0.8  # <= 0 means greedy
    top_k: int = 40  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    greedy: bool = False

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature <= 0.0

    def validate(self, vocab_size: int) -> "SamplingConfig":
        if self.temperature < 0:
            raise UserError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 <= self.top_k <= vocab_size:
            raise UserError(f"top_k must be in [0, {vocab_size}] (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise UserError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")
        return self


GREEDY = SamplingConfig(greedy=True)


def position_keys(seed, row_ids_b, positions_b):
    """seed: a scalar, or one per row (a server's requests each bring their own)."""
    seed_b = jnp.broadcast_to(jnp.asarray(seed), row_ids_b.shape)
    return jax.vmap(lambda s, r, t: jax.random.fold_in(jax.random.fold_in(jax.random.key(s), r), t))(
        seed_b, row_ids_b, positions_b)


def sampling_kind(cfg: SamplingConfig) -> str:
    """The static part of a sampling config (compiled in); the values are traced."""
    if cfg.is_greedy:
        return "greedy"
    return "filtered" if (cfg.top_k > 0 or cfg.top_p < 1.0) else "plain"


def filter_logits(logits_bv, temperature, top_k, top_p):
    """Temperature, then top-k (0 = off), then top-p (nucleus); dropped entries become -inf.
    The three knobs are scalars or one value per row."""
    temperature, top_k, top_p = (jnp.reshape(k, (-1, 1)) for k in (temperature, top_k, top_p))
    x = logits_bv.astype(jnp.float32) / temperature
    v = x.shape[-1]
    sorted_x = -jnp.sort(-x, axis=-1)
    rank = jnp.arange(v)[None, :]
    k = jnp.where(top_k > 0, top_k, v)
    sorted_x = jnp.where(rank < k, sorted_x, -jnp.inf)
    probs = jax.nn.softmax(sorted_x, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each entry
    keep = (before < top_p) & (rank < k)  # the smallest prefix whose mass reaches top_p
    thresh = jnp.min(jnp.where(keep, sorted_x, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(x < thresh, -jnp.inf, x)


def sample_tokens(logits_bv, keys_b, kind: str, temperature, top_k, top_p):
    """(B, V) logits -> (B,) int32 tokens. kind from sampling_kind, or "per_row": temperature, top_k and
    top_p are (B,) and each row gets what its own values would select (a server's requests differ)."""
    if kind == "per_row":
        return _per_row(logits_bv, keys_b, temperature, top_k, top_p)
    if kind == "greedy":
        return jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
    if kind == "filtered":
        x = filter_logits(logits_bv, temperature, top_k, top_p)
    else:
        x = logits_bv.astype(jnp.float32) / temperature
    return jax.vmap(jax.random.categorical)(keys_b, x).astype(jnp.int32)


def _per_row(logits_bv, keys_b, temperature, top_k, top_p):
    """Each row by its own knobs. The vocabulary sort (top-k / top-p) and the random draw are skipped
    when no row needs them (lax.cond): on a CPU they cost more than a small model's whole step, and a
    server's rows are often all greedy. Skipping changes no value: a row's token is the same either way."""
    greedy = jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
    t = jnp.maximum(temperature, 1e-6)

    def drawn(_):
        plain = logits_bv.astype(jnp.float32) / t[:, None]
        wants_filter = (top_k > 0) | (top_p < 1.0)
        x = jax.lax.cond(jnp.any(wants_filter & (temperature > 0.0)),
                         lambda: jnp.where(wants_filter[:, None], filter_logits(logits_bv, t, top_k, top_p), plain),
                         lambda: plain)
        tokens = jax.vmap(jax.random.categorical)(keys_b, x).astype(jnp.int32)
        return jnp.where(temperature <= 0.0, greedy, tokens)

    return jax.lax.cond(jnp.all(temperature <= 0.0), lambda _: greedy, drawn, None)
