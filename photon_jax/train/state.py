"""Train state (a plain pytree), the optimizer, and state shardings from an abstract init."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from photon_jax.config import Config
from photon_jax.model import build_model
from photon_jax.sharding import StateLayout, layout_of, strip_boxes


def make_optimizer(cfg: Config) -> optax.GradientTransformation:
    """AdamW with linear warm-up + cosine decay and global-norm clipping."""
    t = cfg.train
    schedule = learning_rate_schedule(cfg)
    # No weight decay on norms, biases and other vectors (LLaMA practice).
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # noqa: E731
    return optax.chain(
        optax.clip_by_global_norm(t.grad_clip),
        optax.adamw(schedule, b1=t.b1, b2=t.b2, weight_decay=t.weight_decay, mask=decay_mask),
    )


def learning_rate_schedule(cfg: Config):
    t = cfg.train
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=t.learning_rate, warmup_steps=t.warmup_steps,
        decay_steps=max(t.steps, t.warmup_steps + 1), end_value=t.learning_rate * t.min_lr_ratio)


def _init_state_boxed(cfg: Config, tx, rng):
    model = build_model(cfg.model)
    tokens = jnp.zeros((1, cfg.data.seq_len), jnp.int32)
    params = model.init(rng, tokens)["params"]
    return {"step": jnp.zeros((), jnp.int32), "skipped": jnp.zeros((), jnp.int32),
            "params": params, "opt_state": tx.init(params)}


def state_layout(cfg: Config, tx, mesh, rules) -> StateLayout:
    return layout_of(jax.eval_shape(lambda: _init_state_boxed(cfg, tx, jax.random.PRNGKey(0))), mesh, rules)


def init_state(cfg: Config, tx, layout: StateLayout):
    """Materialise the state directly in its shardings (no host-side full copy)."""
    rng = jax.random.PRNGKey(cfg.train.seed)
    init = jax.jit(lambda r: strip_boxes(_init_state_boxed(cfg, tx, r)), out_shardings=layout.shardings)
    return init(rng)
