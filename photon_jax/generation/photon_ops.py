"""PHOTON building blocks with caches and masks, for prefill and decode (shared by all modes).

`Hier` wraps a PhotonLM and its static shape facts. Its methods call the model's own
building blocks (encode, chunk, convert, decode, ...) through `model.apply(..., method=...)`,
so decoding runs exactly the training code path, one unit at a time.

Cache write rule for the big encoder caches (no per-row select, which would copy the cache):
a row that does not finish a unit this step still runs the step on garbage and writes it at
its *next free* slot, which is beyond its valid length and is overwritten by its next real
write. A row whose cache is full can never finish another unit at that level, so the clamped
write there lands on an entry it never reads again. The tiny local decoder caches are
selected per row instead.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from photon_jax.config import ModelConfig
from photon_jax.generation import rows
from photon_jax.generation.caches import kv_zeros
from photon_jax.generation.modes import encoder_block, encoder_kinds, own_content
from photon_jax.model.photon import PhotonLM


class Hier:
    def __init__(self, cfg: ModelConfig, mode: str):
        self.cfg = cfg
        self.mode = mode
        self.model = PhotonLM(cfg)
        self.n = len(cfg.levels)
        self.C = tuple(lv.chunk for lv in cfg.levels)
        self.R = tuple(lv.fanout for lv in cfg.levels)
        self.W = tuple(r + c - 1 for r, c in zip(self.R, self.C))  # local decoder window
        # tokens per level-l unit, l = 0..L (level 0 = a token, level L = a meta-context)
        self.tok_per = tuple(math.prod(self.C[:l]) for l in range(self.n + 1))
        self.block = tuple(encoder_block(cfg, i) for i in range(self.n))
        self.kinds = encoder_kinds(cfg, mode)
        self.own = own_content(cfg, mode)

    # ------------------------------------------------------------------ plain calls

    def call(self, params, method, *args):
        return self.model.apply({"params": params}, *args, method=method)

    def start(self, params, i):
        return self.call(params, PhotonLM.start, i)

    def logits(self, params, h_bd):
        return self.call(params, PhotonLM.logits, h_bd)

    def convert(self, params, d, cond_bd):
        return self.call(params, PhotonLM.convert, d, cond_bd)  # (b, R, D)

    # ------------------------------------------------------------------ encoders

    def encoder_step(self, params, i, cache, a_bd, unit_b, base_b=None):
        """One encoder-i step for level-(i+1) unit `unit_b` of each row; returns (X (b, D), cache)."""
        kind = self.kinds[i]
        blk = self.block[i]
        own = {"k": cache["k"], "v": cache["v"]}
        size = own["k"].shape[2]
        slots = jnp.arange(size, dtype=jnp.int32)[None, :]
        if kind == "ring":
            write = unit_b % blk
            valid = slots <= write[:, None]
        else:
            base = jnp.zeros_like(unit_b) if base_b is None else base_b
            unit = base[:, None] + slots
            valid = unit <= unit_b[:, None]
            if blk:
                valid &= unit >= ((unit_b // blk) * blk)[:, None]
            write = unit_b - base
        call_cache = dict(cache)  # may carry a shared prompt part (multiquery.py)
        h, new = self.call(params, PhotonLM.encode, i, a_bd[:, None], unit_b[:, None], valid[:, None, :],
                           call_cache, write)
        out = dict(cache)
        out.update(k=new["k"], v=new["v"])
        return h[:, 0], out

    def encoder_input(self, params, i, tokens_bt, unit_b, buf_bcd):
        """Chunker output for level-(i+1) unit `unit_b`: from the token buffer (i = 0) or buf."""
        if i == 0:
            seg = rows.window(tokens_bt, unit_b * self.C[0], self.C[0])
            lower = self.call(params, PhotonLM.embed_for_encoder, seg)
        else:
            lower = buf_bcd
        return self.call(params, PhotonLM.chunk, i, lower)[:, 0]

    # ------------------------------------------------------------------ local decoders

    def decoder_feed(self, params, d, cache, x_bd, row_b):
        """Feed one content row at window row `row_b`; returns the output there = the next slot."""
        slots = jnp.arange(self.W[d], dtype=jnp.int32)[None, :]
        mask = (slots <= row_b[:, None])[:, None, :]
        h, new = self.call(params, PhotonLM.decode, d, x_bd[:, None], row_b[:, None], mask, cache, row_b)
        return h[:, 0], new

    def decoder_window(self, params, d, x_bwd):
        """Run rows 0..w-1 of a fresh window (w <= W): returns (h (b, w, D), filled local cache)."""
        b, w = x_bwd.shape[:2]
        pos = rows.positions(b, w)
        mask = jnp.arange(self.W[d], dtype=jnp.int32)[None, None, :] <= pos[:, :, None]
        cache = kv_zeros(self.cfg, self.cfg.levels[d].decoder_layers, b, self.W[d])
        return self.call(params, PhotonLM.decode, d, x_bwd, pos, mask, cache, jnp.zeros((b,), jnp.int32))

    def full_window(self, params, d, cond_bd, content_bkd=None):
        """Decoder d's window for one unit: converter rows + C-1 content rows.

        content_bkd None means own-output content (variant C, recgen): slot j's output is the
        content of slot j+1, computed with C-1 passes as in PhotonLM.decode_level.
        """
        rows_brd = self.convert(params, d, cond_bd)
        r, c = self.R[d], self.C[d]
        if content_bkd is None:
            b, _, dd = rows_brd.shape
            content_bkd = jnp.zeros((b, c - 1, dd), rows_brd.dtype)
            for j in range(c - 1):
                h, _ = self.decoder_window(params, d, jnp.concatenate([rows_brd, content_bkd], axis=1))
                content_bkd = content_bkd.at[:, j].set(h[:, r - 1 + j])
        window = jnp.concatenate([rows_brd, content_bkd.astype(rows_brd.dtype)], axis=1)
        return self.decoder_window(params, d, window)
