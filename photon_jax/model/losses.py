"""Losses on one shared set of targets for every family (docs/method.md 3.3).

Targets are tokens[:, 1:] (positions 2..T, 1-based). A vanilla model predicts them
from logits[:, :-1]; PHOTON's logits[:, i] already predict tokens[:, i], so it uses
logits[:, 1:]. Padding is masked out, nothing else.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from photon_jax.config import ModelConfig


def target_positions(cfg: ModelConfig) -> slice:
    """The logits positions that predict targets tokens[:, 1:]."""
    return slice(None, -1) if cfg.family == "vanilla" else slice(1, None)


def target_logits(cfg: ModelConfig, logits_btv):
    """Logits aligned with targets tokens[:, 1:]."""
    return logits_btv[:, target_positions(cfg)]


def token_nll(cfg: ModelConfig, logits_btv, tokens_bt):
    """Per-target negative log-likelihood, shape (B, T-1), in fp32.

    Computed at every logits position (the one position without a target reads a stand-in token)
    and the (B, T) result sliced: slicing the (B, T, V) logits instead copies them, and pads their
    gradient back, every step."""
    logits = logits_btv.astype(jnp.float32)
    # The token each logits position predicts: the next one (vanilla) or its own (PHOTON).
    targets_bt = jnp.roll(tokens_bt, -1, axis=1) if cfg.family == "vanilla" else tokens_bt
    log_z = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets_bt[..., None], axis=-1)[..., 0]
    return (log_z - picked)[:, target_positions(cfg)]


def loss_fn(cfg: ModelConfig, logits_btv, aux: dict, tokens_bt, mask_bt):
    """L = L_token + alpha * L_rec, plus the metrics. mask_bt marks real (non-pad) tokens."""
    nll = token_nll(cfg, logits_btv, tokens_bt)
    weight = mask_bt[:, 1:].astype(jnp.float32)
    count = jnp.maximum(weight.sum(), 1.0)
    token_loss = jnp.sum(nll * weight) / count
    rec = aux.get("rec_loss", jnp.zeros((), jnp.float32))
    alpha = cfg.rec_alpha if cfg.family == "photon" else 0.0
    total = token_loss + alpha * rec
    return total, {"loss": total, "token_loss": token_loss, "rec_loss": rec, "target_tokens": weight.sum()}
