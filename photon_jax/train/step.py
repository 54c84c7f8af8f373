"""The pure train step (jitted by the caller with explicit shardings); the eval step is eval/metrics.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from photon_jax.config import Config
from photon_jax.model import build_model
from photon_jax.model.losses import loss_fn


def make_train_step(cfg: Config, tx, schedule):
    model = build_model(cfg.model)
    accum = cfg.train.grad_accum
    skip_nonfinite = cfg.train.nonfinite == "skip"

    def compute_loss(params, tokens_bt, mask_bt):
        logits, aux = model.apply({"params": params}, tokens_bt, mask_bt)
        return loss_fn(cfg.model, logits, aux, tokens_bt, mask_bt)

    grad_fn = jax.value_and_grad(compute_loss, has_aux=True)

    def train_step(state, batch):
        tokens, mask = batch["tokens"], batch["mask"]
        params = state["params"]
        if accum == 1:
            (_, metrics), grads = grad_fn(params, tokens, mask)
        else:
            # Micro-batches: weight each by its share of target tokens so accumulation equals one big batch.
            b = tokens.shape[0]
            micro = lambda x: x.reshape(accum, b // accum, *x.shape[1:])  # noqa: E731
            total_targets = jnp.maximum(mask[:, 1:].sum(), 1.0)

            def body(carry, xs):
                grads_acc, metrics_acc = carry
                (_, m), g = grad_fn(params, *xs)
                w = m["target_tokens"] / total_targets
                grads_acc = jax.tree.map(lambda a, x: a + w * x, grads_acc, g)
                metrics_acc = jax.tree.map(lambda a, x: a + w * x, metrics_acc, m)
                return (grads_acc, metrics_acc), None

            zeros_g = jax.tree.map(jnp.zeros_like, params)
            zeros_m = {k: jnp.zeros((), jnp.float32) for k in ("loss", "token_loss", "rec_loss", "target_tokens")}
            (grads, metrics), _ = jax.lax.scan(body, (zeros_g, zeros_m), (micro(tokens), micro(mask)))
            metrics["target_tokens"] = mask[:, 1:].sum()
        grad_norm = optax.tree.norm(grads)
        updates, new_opt = tx.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
        if skip_nonfinite:
            keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
            new_params, new_opt = keep(new_params, params), keep(new_opt, state["opt_state"])
        new_state = {
            "step": state["step"] + 1,
            "skipped": state["skipped"] + (~finite).astype(jnp.int32),
            "params": new_params,
            "opt_state": new_opt,
        }
        metrics = dict(metrics, grad_norm=grad_norm, learning_rate=schedule(state["step"]),
                       finite=finite.astype(jnp.float32), skipped=new_state["skipped"].astype(jnp.float32))
        return new_state, metrics

    return train_step
