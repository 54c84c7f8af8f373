"""Token embedding table: a lookup into a (vocab, embed) table, and its transpose for tied logits.

Same parameter (`embedding`, logical axes (vocab, embed)) and initialiser as flax's nn.Embed, so
checkpoints do not change. What differs is the layout of the lookup on a sharded mesh: under FSDP the
table's embed axis is split over the devices that also split the batch, and a gather from it would
hand back rows split along embed (the table's layout) where the network wants rows split along the
batch. XLA's partitioner cannot move between those two layouts cheaply and replicates the activations
instead (and the same again for the gradient's scatter). So the lookup reads the table gathered
whole along embed, as every projection's weight is under FSDP, and its rows are pinned to the
activation layout; the backward then reduce-scatters one dense table gradient.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from photon_jax.model.layers import logical_init

Dtype = Any


class TokenEmbed(nn.Module):
    num_embeddings: int
    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        init = logical_init(nn.initializers.normal(stddev=1.0), ("vocab", "embed"))
        self.embedding = self.param("embedding", init, (self.num_embeddings, self.features), self.param_dtype)

    def __call__(self, tokens_bt):
        table_vd = nn.with_logical_constraint(self.embedding, ("vocab", None))
        x_btd = jnp.take(table_vd.astype(self.dtype), tokens_bt, axis=0)
        positions = ("length",) * (tokens_bt.ndim - 1)  # decoding looks up (batch,) token ids
        return nn.with_logical_constraint(x_btd, ("batch", *positions, "embed"))

    def attend(self, h_btd):
        """Tied output projection: h . table^T."""
        table_vd = nn.with_logical_constraint(self.embedding, ("vocab", None))
        return jnp.dot(h_btd.astype(self.dtype), table_vd.astype(self.dtype).T)
