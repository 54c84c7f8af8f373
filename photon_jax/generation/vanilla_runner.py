"""Cached decoding of the vanilla LM: one token KV cache, logits[:, i] predict token i+1.

Prefill writes the right-padded prompts at slots 0..T-1 (padding lands beyond each row's
length and is overwritten by its own later tokens); every step feeds the sampled token at
its row's position and reads the logits for the next one.
"""

from __future__ import annotations

import jax.numpy as jnp

from photon_jax.config import ModelConfig
from photon_jax.generation import multiquery, rows
from photon_jax.generation.caches import kv_zeros
from photon_jax.model.attention import CausalMask
from photon_jax.model.vanilla import VanillaLM


def _hidden(module, tokens_bt, positions_bt, mask_bts, cache, write_index_b):
    return module.stack(module.embed(tokens_bt), positions_bt, mask_bts, cache, write_index_b)


class VanillaRunner:
    """Prefill and decode of a VanillaLM (mode 'vanilla')."""

    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg
        self.model = VanillaLM(cfg)

    def call(self, params, method, *args):
        return self.model.apply({"params": params}, *args, method=method)

    def prefill(self, params, tokens_bt, prompt_len_b, cap_tokens: int):
        b, t = tokens_bt.shape
        pos = rows.positions(b, t)
        cache = kv_zeros(self.cfg, self.cfg.num_layers, b, cap_tokens)  # filled from slot 0: a CausalMask prefill
        hid, cache = self.call(params, _hidden, tokens_bt, pos, CausalMask(), cache, jnp.zeros((b,), jnp.int32))
        last = rows.take(hid, prompt_len_b - 1)
        return {"tokens": cache}, self.call(params, VanillaLM.logits, last)

    def advance(self, params, st, tokens_bt, fed_b, adv_b):
        p = fed_b - adv_b.astype(fed_b.dtype)  # the new token's position (next free slot for others)
        tok = rows.take(tokens_bt, p)
        cache = st["tokens"]
        size = cache["k"].shape[2]
        base = st.get("base", jnp.zeros_like(p))  # shared prompt length (multiquery.py)
        valid = (base[:, None] + jnp.arange(size, dtype=jnp.int32)[None, :]) <= p[:, None]
        hid, new = self.call(params, _hidden, tok[:, None], p[:, None], valid[:, None, :], dict(cache), p - base)
        out = dict(cache)
        out.update(k=new["k"], v=new["v"])
        return {**st, "tokens": out}, self.call(params, VanillaLM.logits, hid[:, 0])

    def share(self, st, prompt_len_g, spec):
        """Prefill state of G prompts -> loop state of G * spec.samples rows sharing the prompt cache."""
        return multiquery.share_vanilla_state(st, prompt_len_g, spec.prompt_pad, spec.max_new, spec.samples)
