"""One decode step of a PHOTON model: the cascade that runs after each sampled token.

Model state (per row; lengths follow from the row's token count `fed_b`):
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

from photon_jax.generation import rows
from photon_jax.generation.photon_ops import Hier
from photon_jax.model.photon import PhotonLM


def _set(st, key, index, value):
    items = list(st[key])
    items[index] = value
    return {**st, key: items}


class Cascade:
    def __init__(self, h: Hier):
        self.h = h

    def advance(self, params, st, tokens_bt, fed_b, adv_b):
        """Rows in adv_b have just appended a token (fed_b counts it). Returns (state, next logits)."""
        st = self._complete(params, st, tokens_bt, fed_b, 0, adv_b)
        return st, self.h.logits(params, st["xhat"][0])

    def _complete(self, params, st, tokens_bt, fed_b, d, mask_b):
        h = self.h
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
                cond = st["xhat"][d + 1] if h.cfg.alignment == "A" else prev_up
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
