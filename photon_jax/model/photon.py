"""PHOTON: bottom-up hierarchical encoder + top-down chunk-local decoders (docs/method.md 3).

Level indices are 0-based in code: `i` is level l = i + 1. Encoder i turns level-i
states (i = 0: narrow token embeddings) into X^(i+1); decoder i turns the
conditioning of each level-(i+1) unit into Xhat^(i) for its C_{i+1} children
(decoder 0 rebuilds token states, read by the LM head).

Alignment: `logits[:, i]` predicts `tokens[:, i]` from t_<i (variant A; B and C
see less, see docs/method.md 3.3). The static facts (chunk lengths, attention blocks,
which stream conditions which unit) come from hierarchy.Hierarchy. Every method below
is also a building block of cached generation, so the training forward and decoding
share one code path.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from photon_jax.config import ModelConfig
from photon_jax.model.attention import CausalMask
from photon_jax.model.hierarchy import Hierarchy, feed_own_outputs
from photon_jax.model.layers import RMSNorm, Stack, StackSpec, dtype_of, logical_init
from photon_jax.model.projection import Dense
from photon_jax.model.vanilla import lm_head, positions_like, token_embedding


class Chunker(nn.Module):
    """C consecutive lower states -> one vector: plain concat, or RMSNorm(concat) + Linear(bias)."""

    cfg: ModelConfig
    kind: str

    @nn.compact
    def __call__(self, x_bmcd):
        b, m, c, d = x_bmcd.shape
        a_bmk = x_bmcd.reshape(b, m, c * d)
        if self.kind == "concat":
            return a_bmk.astype(dtype_of(self.cfg.dtype))
        a_bmk = RMSNorm(self.cfg.norm_eps, self.cfg.dtype, self.cfg.param_dtype, name="norm")(a_bmk)
        init = logical_init(nn.initializers.normal(stddev=(c * d) ** -0.5), ("mlp", "embed"))
        return Dense(self.cfg.width, use_bias=True, dtype=dtype_of(self.cfg.dtype),
                     param_dtype=dtype_of(self.cfg.param_dtype), kernel_init=init,
                     bias_init=logical_init(nn.initializers.zeros, ("embed",)), name="linear")(a_bmk)


class Converter(nn.Module):
    """One level-l vector -> R rows of width D (a Linear(D -> R*D) with bias, the paper's 1-D conv)."""

    cfg: ModelConfig
    fanout: int

    @nn.compact
    def __call__(self, cond_bmd):
        m = self.cfg
        init = logical_init(nn.initializers.normal(stddev=m.width ** -0.5), ("embed", "mlp"))
        rows = Dense(self.fanout * m.width, use_bias=True, dtype=dtype_of(m.dtype),
                     param_dtype=dtype_of(m.param_dtype), kernel_init=init,
                     bias_init=logical_init(nn.initializers.zeros, ("mlp",)), name="linear")(cond_bmd)
        return rows.reshape(*cond_bmd.shape[:-1], self.fanout, m.width)


def shift_right(x_bmd, first_d):
    """[first, x_0, ..., x_{M-2}]: unit m is conditioned on unit m-1."""
    first = jnp.broadcast_to(first_d.astype(x_bmd.dtype), (x_bmd.shape[0], 1, x_bmd.shape[2]))
    return jnp.concatenate([first, x_bmd[:, :-1]], axis=1)


def cosine_distance(pred_bmd, target_bmd, weight_bm):
    """Weighted mean of 1 - cos; the eps sits inside the sqrt so the gradient stays finite at 0."""
    pred, target = pred_bmd.astype(jnp.float32), target_bmd.astype(jnp.float32)
    inv_norms = jax.lax.rsqrt(jnp.sum(pred * pred, -1) * jnp.sum(target * target, -1) + 1e-12)
    cos = jnp.sum(pred * target, -1) * inv_norms
    return jnp.sum((1.0 - cos) * weight_bm) / jnp.maximum(jnp.sum(weight_bm), 1.0)


class PhotonLM(nn.Module):
    cfg: ModelConfig

    def setup(self):
        m = self.cfg
        spec = StackSpec.from_model(m)
        self.hier = Hierarchy.of(m)
        n = self.hier.num_levels
        self.encoder_embed = token_embedding(m, m.embed_width, "encoder_embed")
        self.chunkers = [Chunker(m, m.chunker_kind(i), name=f"chunker_{i}") for i in range(n)]
        self.encoders = [Stack(spec, lv.encoder_layers, name=f"encoder_{i}") for i, lv in enumerate(m.levels)]
        self.converters = [Converter(m, lv.fanout, name=f"converter_{i}") for i, lv in enumerate(m.levels)]
        self.decoders = [Stack(spec, lv.decoder_layers, name=f"decoder_{i}") for i, lv in enumerate(m.levels)]
        self.decoder_embed = token_embedding(m, m.width, "decoder_embed")
        if not m.tie_embeddings:
            self.lm_head = lm_head(m)
        if m.start_latent == "learned":
            # one start vector per shifted stream: the top level under A, every level under B and C
            init = logical_init(nn.initializers.normal(stddev=1.0), ("embed",))
            self.starts = {i: self.param(f"start_{i}", init, (m.width,), dtype_of(m.param_dtype))
                           for i in range(n) if self.hier.shifted(i)}

    # ------------------------------------------------------------------ building blocks

    def start(self, i: int):
        """Conditioning for the first unit when the stream is shifted."""
        if self.cfg.start_latent == "learned":
            return self.starts[i]
        return jnp.ones((self.cfg.width,), dtype_of(self.cfg.dtype))

    def embed_for_encoder(self, tokens_bt):
        return self.encoder_embed(tokens_bt)

    def chunk(self, i: int, lower_bnd):
        """(B, M*C, D_in) -> (B, M, D): one chunker input vector per level-(i+1) unit."""
        b, n, d = lower_bnd.shape
        c = self.cfg.levels[i].chunk
        return self.chunkers[i](lower_bnd.reshape(b, n // c, c, d))

    def encode(self, i: int, a_bmd, positions_bm, mask_bmm, cache=None, write_index_b=None):
        return self.encoders[i](a_bmd, positions_bm, mask_bmm, cache, write_index_b)

    def convert(self, i: int, cond_bmd):
        return self.converters[i](cond_bmd)

    def decode(self, i: int, window_bwd, positions_bw, mask_bww, cache=None, write_index_b=None):
        return self.decoders[i](window_bwd, positions_bw, mask_bww, cache, write_index_b)

    def embed_for_decoder(self, tokens_bt):
        return self.decoder_embed(tokens_bt)

    def logits(self, h_btd):
        if self.cfg.tie_embeddings:
            return self.decoder_embed.attend(h_btd).astype(jnp.float32)
        return self.lm_head(h_btd).astype(jnp.float32)

    # ------------------------------------------------------------------ training forward

    def encode_all(self, tokens_bt):
        """[X^(1), ..., X^(L)]: the whole bottom-up encoder, teacher forced."""
        states = []
        lower = self.embed_for_encoder(tokens_bt)
        for i in range(len(self.cfg.levels)):
            a_bmd = self.chunk(i, lower)
            positions = positions_like(a_bmd)
            lower, _ = self.encode(i, a_bmd, positions, CausalMask(self.hier.encoder_block(i)))
            states.append(lower)
        return states

    def decode_level(self, i: int, cond_bmd, content_bmcd):
        """Slot outputs Xhat^(i) (B, M*C, D) of decoder i for every unit, chunks folded into the batch.

        Window per unit: [R converter rows ; Y_1 .. Y_{C-1}]; slot j is read at row R-1+j (0-based),
        so it has seen the rows and Y_<j, never Y_j.
        """
        level = self.cfg.levels[i]
        r, c = level.fanout, level.chunk
        b, m, d = cond_bmd.shape
        rows_bmrd = self.convert(i, cond_bmd)
        width = r + c - 1
        positions = jnp.broadcast_to(jnp.arange(width, dtype=jnp.int32), (b * m, width))
        mask = CausalMask()

        def run(content_bmkd):
            window = jnp.concatenate([rows_bmrd, content_bmkd.astype(rows_bmrd.dtype)], axis=2)
            h, _ = self.decode(i, window.reshape(b * m, width, d), positions, mask)
            return h[:, r - 1:].reshape(b, m, c, d)

        if self.hier.self_fed(i):  # variant C: each slot's output is the content input of the next
            out = run(feed_own_outputs(run, jnp.zeros((b, m, c - 1, d), rows_bmrd.dtype), c))
        else:
            out = run(content_bmcd[:, :, : c - 1])
        return out.reshape(b, m * c, d)

    def __call__(self, tokens_bt, token_mask_bt=None):
        """logits (B, T, V) with logits[:, i] predicting tokens[:, i]; aux holds L_rec."""
        m = self.cfg
        n = self.hier.num_levels
        b, t = tokens_bt.shape
        if token_mask_bt is None:
            token_mask_bt = jnp.ones((b, t), jnp.float32)
        states = self.encode_all(tokens_bt)
        cond = shift_right(states[-1], self.start(n - 1))
        rec_terms = []
        for i in reversed(range(n)):
            c = m.levels[i].chunk
            if i > 0:
                content = states[i - 1]
            else:
                content = self.embed_for_decoder(tokens_bt)
            xhat = self.decode_level(i, cond, content.reshape(b, cond.shape[1], c, -1))
            if i > 0:
                target = states[i - 1]
                if m.rec_stop_gradient:
                    target = jax.lax.stop_gradient(target)
                tokens_per_unit = t // target.shape[1]
                unit_weight = token_mask_bt.reshape(b, target.shape[1], tokens_per_unit).max(-1)
                rec_terms.append(cosine_distance(xhat, target, unit_weight))
                cond = shift_right(xhat, self.start(i - 1)) if self.hier.shifted(i - 1) else xhat
        logits = self.logits(xhat)
        rec = jnp.sum(jnp.stack(rec_terms)) if rec_terms else jnp.zeros((), jnp.float32)
        if m.rec_alpha == 0:  # reported as a metric only: no backward pass through it
            rec = jax.lax.stop_gradient(rec)
        return logits, {"rec_loss": rec}
