"""Vanilla LLaMA decoder-only LM: embedding, N blocks, final RMSNorm, LM head (untied by default)."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from photon_jax.config import ModelConfig
from photon_jax.model.attention import CausalMask
from photon_jax.model.embedding import TokenEmbed
from photon_jax.model.layers import Stack, StackSpec, dtype_of, logical_init
from photon_jax.model.projection import Dense, elementwise_dtype


def token_embedding(m: ModelConfig, width: int, name: str) -> TokenEmbed:
    return TokenEmbed(m.vocab_size, width, dtype=dtype_of(m.dtype), param_dtype=dtype_of(m.param_dtype), name=name)


def lm_head(m: ModelConfig, name: str = "lm_head") -> Dense:
    """The logits leave the matmul in the dtype the loss's softmax reads (fp32 on CPU)."""
    init = logical_init(nn.initializers.normal(stddev=m.width ** -0.5), ("embed", "vocab"))
    return Dense(m.vocab_size, use_bias=False, dtype=dtype_of(m.dtype), param_dtype=dtype_of(m.param_dtype),
                 out_dtype=elementwise_dtype(m.dtype), kernel_init=init, name=name)


def positions_like(x_bt):
    b, t = x_bt.shape[:2]
    return jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))


class VanillaLM(nn.Module):
    """logits[:, i] predicts tokens[:, i + 1] (the usual next-token alignment)."""

    cfg: ModelConfig

    def setup(self):
        m = self.cfg
        self.embed = token_embedding(m, m.width, "embed")
        self.stack = Stack(StackSpec.from_model(m), m.num_layers, name="stack")
        if not m.tie_embeddings:
            self.lm_head = lm_head(m)

    def logits(self, h_btd):
        if self.cfg.tie_embeddings:
            return self.embed.attend(h_btd).astype(jnp.float32)
        return self.lm_head(h_btd).astype(jnp.float32)

    def run_stack(self, tokens_bt, positions_bt, mask_bts, cache=None, write_index_b=None):
        """One pass of the stack over new tokens (prefill or decode when a cache is given)."""
        h_btd, new_cache = self.stack(self.embed(tokens_bt), positions_bt, mask_bts, cache, write_index_b)
        return self.logits(h_btd), new_cache

    def __call__(self, tokens_bt, token_mask_bt=None):
        positions = positions_like(tokens_bt)
        logits_btv, _ = self.run_stack(tokens_bt, positions, CausalMask())
        return logits_btv, {}
