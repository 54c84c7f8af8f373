"""Prompt log-probabilities for `echo` with `logprobs` (how lm-evaluation-harness scores through a server)
and for vLLM's `prompt_logprobs`.

One teacher-forced forward of the training model over the prompt (the same path `photon-jax eval`
scores with), padded to a width from the scoring ladder (eval/scoring.py) so a few programs serve
every prompt: position j's entry is log p(token j | tokens < j) and the `top` most likely tokens
there, and its rank; position 0 has none (OpenAI gives null). PHOTON's forward is exact (what hiergen decodes).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from photon_jax.eval.scoring import pick_width, width_ladder
from photon_jax.model import build_model
from photon_jax.model.losses import target_logits

TOP = 5  # the most alternatives a request may ask for (protocol: logprobs <= 5)


def _score(params, tokens_bt, cfg):
    logits = target_logits(cfg, build_model(cfg).apply({"params": params}, tokens_bt)[0]).astype(jnp.float32)
    logp_btv = jax.nn.log_softmax(logits, axis=-1)
    chosen_bt = jnp.take_along_axis(logp_btv, tokens_bt[:, 1:, None], axis=-1)[..., 0]
    rank_bt = 1 + jnp.sum(logp_btv > chosen_bt[..., None], axis=-1)  # vLLM's prompt_logprobs give it
    top_val, top_ids = jax.lax.top_k(logp_btv, TOP)
    return chosen_bt, top_val, top_ids, rank_bt


class PromptScorer:
    """`host` (several processes): a replicated sharding for the outputs, so that process 0 can read them."""

    def __init__(self, cfg, params, max_context: int, host=None):
        self.ladder = width_ladder(cfg.meta_context, max_context)
        self.params = params
        self.fn = jax.jit(functools.partial(_score, cfg=cfg), **({"out_shardings": host} if host else {}))
        self.forward = self.device_forward  # serve/lockstep.py runs it on every process instead

    def device_forward(self, tokens_bt: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(np.asarray(x) for x in self.fn(self.params, np.asarray(tokens_bt, np.int32)))

    def __call__(self, ids: list[int], top: int) -> list[dict | None]:
        width = pick_width(len(ids), self.ladder)
        tokens = np.zeros((1, width), np.int32)
        tokens[0, : len(ids)] = ids
        chosen, top_val, top_ids, rank = (x[0] for x in self.forward(tokens))
        out = [None]
        for j in range(1, len(ids)):  # target j - 1 of the model's outputs is token j
            entry = {"token": ids[j], "logprob": float(chosen[j - 1]), "rank": int(rank[j - 1])}
            if top:
                entry["top"] = {int(t): float(v) for t, v in zip(top_ids[j - 1, :top], top_val[j - 1, :top])}
            out.append(entry)
        return out
