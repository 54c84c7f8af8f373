"""Token loss, perplexity and bits per byte on one set of targets for every family.

Targets are tokens[:, 1:] of each window for every model family (docs/method.md 3.3), so
perplexities are directly comparable. Bits per byte divide the total NLL (in bits) by
the UTF-8 bytes of the scored target tokens, which makes it tokenizer-independent.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from photon_jax.config import Config
from photon_jax.errors import UserError
from photon_jax.model import build_model
from photon_jax.model.losses import token_nll


def make_eval_step(cfg: Config):
    """Sum of target NLL and target count over a batch (fp32), for exact corpus-level averages."""
    model = build_model(cfg.model)

    def eval_step(params, batch):
        tokens, mask = batch["tokens"], batch["mask"]
        logits, _ = model.apply({"params": params}, tokens, mask)
        nll = token_nll(cfg.model, logits, tokens)
        weight = mask[:, 1:].astype(jnp.float32)
        # per target position (summed over the batch): the by-position profile (eval/by_position.py)
        return {"nll_sum": jnp.sum(nll * weight), "targets": jnp.sum(weight),
                "nll_t": jnp.sum(nll * weight, axis=0), "targets_t": jnp.sum(weight, axis=0)}

    return eval_step


def summarize(nll_sum: float, targets: float, target_bytes: float | None) -> dict:
    loss = nll_sum / max(targets, 1.0)
    out = {"token_loss": loss, "perplexity": math.exp(min(loss, 50.0)), "targets": targets}
    if target_bytes:
        out["bits_per_byte"] = nll_sum / math.log(2.0) / target_bytes
        out["bytes"] = target_bytes
    return out


def evaluate_batches(eval_step, params, batches, byte_lengths: np.ndarray | None = None,
                     to_device=lambda b: b) -> dict:
    """Exact corpus-level averages over every batch (sums, not means of means)."""
    nll_sum, targets, target_bytes = 0.0, 0.0, 0.0
    for batch in batches:
        out = eval_step(params, to_device(batch))
        nll_sum += float(out["nll_sum"])
        targets += float(out["targets"])
        if byte_lengths is not None:
            target_tokens = np.asarray(batch["tokens"])[:, 1:]
            weight = np.asarray(batch["mask"])[:, 1:]
            target_bytes += float(np.sum(byte_lengths[target_tokens] * weight))
    if byte_lengths is not None and jax.process_count() > 1:
        # nll_sum and targets come out of the global (all-process) batch; the bytes were counted on this
        # process's rows only, so add up every process's count.
        from jax.experimental import multihost_utils

        counts = multihost_utils.process_allgather(np.asarray([round(target_bytes)], np.int32))
        target_bytes = float(np.sum(np.asarray(counts, np.int64)))
    if targets == 0:
        raise UserError("evaluation data has no target tokens")
    return summarize(nll_sum, targets, target_bytes if byte_lengths is not None else None)
