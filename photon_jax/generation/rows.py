"""Per-row helpers for ragged batches: every row has its own offsets, all shapes stay fixed."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def take(x_bt, index_b):
    """x[b, index[b]] for an array with a batch axis first."""
    return x_bt[jnp.arange(x_bt.shape[0]), index_b]


def window(x_bt, start_b, size: int):
    """x[b, start[b] : start[b] + size] (start is clamped so the window stays inside)."""
    return jax.vmap(lambda row, s: jax.lax.dynamic_slice_in_dim(row, s, size, axis=0))(x_bt, start_b)


def select(mask_b, new, old, axis: int = 0):
    """Per-row choice between two pytrees whose leaves have the batch on `axis`."""
    def one(n, o):
        shape = [1] * n.ndim
        shape[axis] = n.shape[axis]
        return jnp.where(mask_b.reshape(shape), n, o)
    return jax.tree.map(one, new, old)


def positions(batch: int, length: int, offset_b=None):
    pos = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    return pos if offset_b is None else pos + offset_b[:, None]
