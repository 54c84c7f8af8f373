"""PHOTON generation: prefill and the per-token decode cascade, shared by every mode (docs/method.md 5).

The runner's methods call the model's own building blocks (encode, chunk, convert, decode, ...)
through `model.apply(..., method=...)`, so decoding runs exactly the training code path, one unit
at a time. The mode only sets which cache each encoder keeps and where each decoder's content
comes from (Hierarchy.encoder_kinds / own_content):

* hiergen (exact): every encoder level keeps a global KV cache; each finished unit is re-encoded
  bottom-up. Reproduces the training forward.
* recgen (the paper's fast mode, lossy): only the top encoder keeps a cache; inside a
  meta-context every decoder at level >= 2 is fed its own slot outputs, so sampled tokens reach
  only the level-1 decoder. When a meta-context ends, its level-(L-1) states (true X for units
  finished inside the prompt, the decoder's own Xhat for generated ones) go through the top
  chunker and advance the top encoder by one step. With L = 1, recgen == hiergen.
* exact-local (block_local_lower models): exact like hiergen, but every lower encoder keeps
  only a ring of one meta-context's units; the top level stays global.

Cache write rule for the big encoder caches (no per-row select, which would copy the cache):
a row that does not finish a unit this step still runs the step on garbage and writes it at
its *next free* slot, which is beyond its valid length and is overwritten by its next real
write. A row whose cache is full can never finish another unit at that level, so the clamped
write there lands on an entry it never reads again. The tiny local decoder caches are
selected per row instead.

Prefill (docs/method.md 5.1, 5.4): one teacher-forced pass over ragged prompts.

Input: prompts right-padded to T = Hierarchy.prompt_pad(longest prompt) tokens, so every row's
current (unfinished) meta-context lies inside the padded batch. Per row with P tokens:

* encoder i runs over all level-(i+1) units of the padded batch; the first P // (C_1..C_{i+1})
  are the row's finished units (the longest prefix that is a multiple of the unit size, 5.4),
  later ones are padding garbage that causality keeps out of the valid ones and that the
  cache masks (by row length) never read. "global" caches keep every unit; "ring" caches
  (exact-local) are filled by re-running the encoder on the current meta-context only;
  recgen's lower encoders run without a cache.
* buf[d] (d >= 1) holds the finished level-d states of the current level-(d+1) unit: the
  chunker input of encoder d and the content of decoder d.
* decoders top-down, current unit only: decoder d's window for the row's current level-(d+1)
  unit is [converter rows ; content of its finished children], conditioned on X^(L)_{g-1}
  (start latent for g = 0) at the top and, under alignment A, on the slot output of the same
  unit one level up. B and C need the previous unit's output, taken from full teacher-forced
  decoder streams (PhotonLM.decode_level). The leftover P mod B prompt tokens are thus
  teacher-forced content of the current meta-context: no padding between prompt and
  continuation, no dropped tokens.

Returns the model state below and the next-token logits (predicting token P).

Decode (docs/method.md 5.2, 5.3). Model state (per row; lengths follow from the row's token count `fed_b`):
  enc[i]   encoder i's KV cache (caches.py), or None (recgen lower levels)
  dec[d]   decoder d's local cache: the window of the current level-(d+1) unit
  xhat[d]  decoder d's output for the current level-d unit (d = 0: the next token's state,
           read by the LM head)
  buf[d]   (d >= 1) the finished level-d states of the current level-(d+1) unit
  enc_base[i] (multi-query only) units of row's prompt held in the shared cache part

After a token is sampled, `advance` completes level-0 unit (the token) for the rows that go
on. Completing a level-d unit, for the rows that do (`_complete`, recursive):
  1. d >= 1: its state X^(d): the chunker over its children + one encoder-(d-1) step with KV
     append (hiergen, exact-local, and the top level in every mode), or the decoder's own
     output xhat[d] (recgen lower levels). Stored in buf[d].
  2. if that also finishes its parent (slot wraps to 0): complete the parent first (one level
     up), then restart decoder d from the new parent's conditioning: the converter rows of
     X^(L) of the meta-context just finished (top), of the parent's new slot output xhat[d+1]
     (alignment A), or of the previous parent's output (B, C). Output at row R-1 = slot 0.
  3. otherwise feed the finished unit's content (token embedding at d = 0; X^(d), or the own
     output under C / recgen) at window row R-1+s; the output there is slot s.
Each level above the tokens runs inside lax.cond(any row needs it), so a step costs one
decoder-0 row unless some row crosses a unit boundary; rows that do not need a level still
compute it on garbage and their results are discarded (fixed shapes for ragged batches).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from photon_jax.config import ModelConfig
from photon_jax.generation import multiquery, rows
from photon_jax.generation.caches import kv_zeros
from photon_jax.model.attention import CausalMask
from photon_jax.model.hierarchy import Hierarchy, feed_own_outputs
from photon_jax.model.photon import PhotonLM, shift_right


def _set(st, key, index, value):
    items = list(st[key])
    items[index] = value
    return {**st, key: items}


class PhotonRunner:
    """Prefill and decode of a PhotonLM in one generation mode (hiergen, recgen, exact-local)."""

    def __init__(self, cfg: ModelConfig, mode: str):
        self.cfg = cfg
        self.mode = mode
        self.model = PhotonLM(cfg)
        self.hier = hier = Hierarchy.of(cfg)
        # short names for the hierarchy's facts, read on every line below
        self.n = hier.num_levels
        self.C, self.R, self.W = hier.chunks, hier.fanouts, hier.windows
        self.tok_per = tuple(hier.tokens_per_unit(level) for level in range(self.n + 1))
        self.block = tuple(hier.encoder_block(i) for i in range(self.n))
        self.kinds = hier.encoder_kinds(mode)
        self.own = hier.own_content(mode)

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
        content of slot j+1 (hierarchy.feed_own_outputs, as in PhotonLM.decode_level).
        """
        rows_brd = self.convert(params, d, cond_bd)
        r, c = self.R[d], self.C[d]
        if content_bkd is None:
            def slot_outputs(content):
                return self.decoder_window(params, d, jnp.concatenate([rows_brd, content], axis=1))[0][:, r - 1:]
            b, _, dd = rows_brd.shape
            content_bkd = feed_own_outputs(slot_outputs, jnp.zeros((b, c - 1, dd), rows_brd.dtype), c)
        window = jnp.concatenate([rows_brd, content_bkd.astype(rows_brd.dtype)], axis=1)
        return self.decoder_window(params, d, window)

    # ------------------------------------------------------------------ prefill

    def prefill(self, params, tokens_bt, prompt_len_b, cap_tokens: int):
        """Teacher-forced pass over right-padded prompts -> (model state, next-token logits); see the module doc."""
        h = self
        cfg, n = h.cfg, h.n
        b, t = tokens_bt.shape
        assert t % h.tok_per[n] == 0
        counts = [prompt_len_b // h.tok_per[level] for level in range(n + 1)]  # finished units per level

        # ---------------------------------------------------------------- encoders, bottom-up
        enc = [None] * n
        streams = [None] * (n + 1)  # streams[l]: X^(l) for every unit of the padded batch (l >= 1)
        lower = h.call(params, PhotonLM.embed_for_encoder, tokens_bt)
        for i in range(n):
            a_bmd = h.call(params, PhotonLM.chunk, i, lower)
            m = a_bmd.shape[1]
            pos = rows.positions(b, m)
            layers = cfg.levels[i].encoder_layers
            if h.kinds[i] == "global":
                size = cap_tokens // h.tok_per[i + 1]  # the cache is filled from slot 0: a CausalMask prefill
                x, enc[i] = h.call(params, PhotonLM.encode, i, a_bmd, pos, CausalMask(h.block[i]),
                                   kv_zeros(cfg, layers, b, size), jnp.zeros((b,), jnp.int32))
            else:
                x, _ = h.call(params, PhotonLM.encode, i, a_bmd, pos, CausalMask(h.block[i]))
                if h.kinds[i] == "ring":
                    blk = h.block[i]
                    first = (counts[i + 1] // blk) * blk  # first unit of the current meta-context
                    pos_blk = rows.positions(b, blk, first)
                    _, enc[i] = h.call(params, PhotonLM.encode, i, rows.window(a_bmd, first, blk), pos_blk,
                                       CausalMask(), kv_zeros(cfg, layers, b, blk),
                                       jnp.zeros((b,), jnp.int32))
            streams[i + 1] = x
            lower = x

        buf = [None] * n
        for d in range(1, n):
            buf[d] = rows.window(streams[d], (counts[d] // h.C[d]) * h.C[d], h.C[d])

        # ---------------------------------------------------------------- conditioning streams (B, C)
        cond_streams = {}
        if any(h.hier.shifted(d) for d in range(n - 1)):  # B, C: lower decoders read the previous unit's output
            cs = shift_right(streams[n], h.start(params, n - 1))
            for d in range(n - 1, 0, -1):
                cond_streams[d] = cs
                m = cs.shape[1]
                xs = h.call(params, PhotonLM.decode_level, d, cs, streams[d].reshape(b, m, h.C[d], -1))
                cs = shift_right(xs, h.start(params, d - 1))
            cond_streams[0] = cs

        # ---------------------------------------------------------------- decoders, top-down
        xhat = [None] * n
        dec = [None] * n
        for d in reversed(range(n)):
            q = counts[d + 1]  # current level-(d+1) unit: the parent of decoder d's window
            if d == n - 1:
                prev = rows.take(streams[n], jnp.maximum(q - 1, 0))
                cond = jnp.where((q >= 1)[:, None], prev, h.start(params, n - 1).astype(prev.dtype))
            elif not h.hier.shifted(d):  # A: the slot output of the same unit one level up
                cond = xhat[d + 1]
            else:
                cond = rows.take(cond_streams[d], q)
            if d == 0:
                content = h.call(params, PhotonLM.embed_for_decoder, rows.window(tokens_bt, q * h.C[0], h.C[0] - 1))
            elif h.hier.self_fed(d):
                content = None
            else:
                content = buf[d][:, : h.C[d] - 1]
            hw, dec[d] = h.full_window(params, d, cond, content)
            slot = counts[d] % h.C[d]
            xhat[d] = rows.take(hw, h.R[d] - 1 + slot)

        state = {"enc": enc, "dec": dec, "xhat": xhat, "buf": buf}
        return state, h.logits(params, xhat[0])

    # ------------------------------------------------------------------ decode

    def advance(self, params, st, tokens_bt, fed_b, adv_b):
        """Rows in adv_b have just appended a token (fed_b counts it). Returns (state, next logits)."""
        st = self._complete(params, st, tokens_bt, fed_b, 0, adv_b)
        return st, self.logits(params, st["xhat"][0])

    def _complete(self, params, st, tokens_bt, fed_b, d, mask_b):
        h = self
        n = h.n
        count = fed_b // h.tok_per[d]
        unit = count - mask_b.astype(count.dtype)  # the finished unit (next free slot for others)
        x_new = None
        if d >= 1:
            i = d - 1  # the encoder that produces level-d states
            if h.kinds[i] == "none":
                x_new = st["xhat"][d]
            else:
                a = h.encoder_input(params, i, tokens_bt, unit, st["buf"][i])
                base = st["enc_base"][i] if "enc_base" in st else None
                x_new, cache = h.encoder_step(params, i, st["enc"][i], a, unit, base)
                st = _set(st, "enc", i, cache)
            if d < n:
                hit = (jnp.arange(h.C[d])[None, :] == (unit % h.C[d])[:, None]) & mask_b[:, None]
                st = _set(st, "buf", d, jnp.where(hit[..., None], x_new[:, None].astype(st["buf"][d].dtype),
                                                  st["buf"][d]))
        if d == n:
            return st, x_new

        slot = count % h.C[d]
        new_parent = mask_b & (slot == 0)
        own_out = st["xhat"][d]  # this level's output for the unit just finished
        prev_up = st["xhat"][d + 1] if d + 1 < n else None

        def restart(st):
            up = self._complete(params, st, tokens_bt, fed_b, d + 1, new_parent)
            if d + 1 == n:
                st, cond = up
            else:
                st = up
                cond = prev_up if h.hier.shifted(d) else st["xhat"][d + 1]
            hw, cache = h.decoder_window(params, d, h.convert(params, d, cond))
            st = _set(st, "dec", d, rows.select(new_parent, cache, st["dec"][d], axis=1))
            return _set(st, "xhat", d, rows.select(new_parent, hw[:, -1], st["xhat"][d]))

        st = jax.lax.cond(jnp.any(new_parent), restart, lambda s: s, st)

        feed = mask_b & (slot != 0)
        if d == 0:
            content = h.call(params, PhotonLM.embed_for_decoder, rows.take(tokens_bt, unit))
        elif h.own[d]:
            content = own_out
        else:
            content = x_new
        out, cache = h.decoder_feed(params, d, st["dec"][d], content, h.R[d] - 1 + slot)
        st = _set(st, "dec", d, rows.select(feed, cache, st["dec"][d], axis=1))
        return _set(st, "xhat", d, rows.select(feed, out.astype(st["xhat"][d].dtype), st["xhat"][d]))

    # ------------------------------------------------------------------ several samples per prompt

    def share(self, st, prompt_len_g, spec):
        """Prefill state of G prompts -> loop state of G * spec.samples rows sharing the prompt caches."""
        return multiquery.share_photon_state(self, st, prompt_len_g, spec.prompt_pad, spec.max_new, spec.samples)
