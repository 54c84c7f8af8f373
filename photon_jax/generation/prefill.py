"""PHOTON prefill (PHOTON.md 5.1, 5.4): one teacher-forced pass over ragged prompts.

Input: prompts right-padded to T = (max_len_prompt // B + 1) * B tokens, so every row's
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

Returns the model state of hiergen.py and the next-token logits (predicting token P).
"""

from __future__ import annotations

import jax.numpy as jnp

from photon_jax.generation import rows
from photon_jax.generation.caches import kv_zeros
from photon_jax.generation.photon_ops import Hier
from photon_jax.model.layers import causal_mask
from photon_jax.model.photon import PhotonLM, shift_right


def prefill(h: Hier, params, tokens_bt, prompt_len_b, cap_tokens: int):
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
            size = cap_tokens // h.tok_per[i + 1]
            kv_pos = rows.positions(b, size)
            mask = causal_mask(pos, kv_pos, block=h.block[i])
            x, enc[i] = h.call(params, PhotonLM.encode, i, a_bmd, pos, mask, kv_zeros(cfg, layers, b, size),
                               jnp.zeros((b,), jnp.int32))
        else:
            x, _ = h.call(params, PhotonLM.encode, i, a_bmd, pos, causal_mask(pos, pos, block=h.block[i]))
            if h.kinds[i] == "ring":
                blk = h.block[i]
                first = (counts[i + 1] // blk) * blk  # first unit of the current meta-context
                pos_blk = rows.positions(b, blk, first)
                _, enc[i] = h.call(params, PhotonLM.encode, i, rows.window(a_bmd, first, blk), pos_blk,
                                   causal_mask(pos_blk, pos_blk), kv_zeros(cfg, layers, b, blk),
                                   jnp.zeros((b,), jnp.int32))
        streams[i + 1] = x
        lower = x

    buf = [None] * n
    for d in range(1, n):
        buf[d] = rows.window(streams[d], (counts[d] // h.C[d]) * h.C[d], h.C[d])

    # ---------------------------------------------------------------- conditioning streams (B, C)
    cond_streams = {}
    if cfg.alignment != "A":
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
        elif cfg.alignment == "A":
            cond = xhat[d + 1]
        else:
            cond = rows.take(cond_streams[d], q)
        if d == 0:
            content = h.call(params, PhotonLM.embed_for_decoder, rows.window(tokens_bt, q * h.C[0], h.C[0] - 1))
        elif h.own[d] and cfg.alignment == "C":
            content = None
        else:
            content = buf[d][:, : h.C[d] - 1]
        hw, dec[d] = h.full_window(params, d, cond, content)
        slot = counts[d] % h.C[d]
        xhat[d] = rows.take(hw, h.R[d] - 1 + slot)

    state = {"enc": enc, "dec": dec, "xhat": xhat, "buf": buf}
    return state, h.logits(params, xhat[0])
