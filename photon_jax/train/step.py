"""The pure train step, the jitted program built from it (explicit shardings, donated state, abstract
arguments), and the compiled program's memory per device. The eval step is eval/metrics.py; the dry run
that audits this program's memory and communication is scaleout/dry_run.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from photon_jax.config import Config
from photon_jax.model import build_model
from photon_jax.model.losses import loss_fn
from photon_jax.sharding import StateLayout


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


def train_step_program(cfg: Config, tx, schedule, layout: StateLayout, in_sharding):
    """The jitted train step (explicit in/out shardings, donated state) and abstract arguments carrying
    the shardings, so that `.lower(*abstract).compile()` needs no allocated state or data."""
    step_fn = jax.jit(make_train_step(cfg, tx, schedule), in_shardings=(layout.shardings, in_sharding),
                      out_shardings=(layout.shardings, None), donate_argnums=0)
    return step_fn, (layout.sharded_abstract(), abstract_batch(cfg, in_sharding))


def abstract_batch(cfg: Config, in_sharding) -> dict:
    """A (batch, length) batch of tokens and loss mask, as ShapeDtypeStructs carrying the batch sharding."""
    return {k: jax.ShapeDtypeStruct((cfg.train.batch_size, cfg.data.seq_len), dt, sharding=in_sharding)
            for k, dt in (("tokens", jnp.int32), ("mask", jnp.float32))}


MEMORY_FIELDS = {"arguments": "argument_size_in_bytes", "outputs": "output_size_in_bytes",
                 "temporaries": "temp_size_in_bytes", "aliased": "alias_size_in_bytes",
                 "code": "generated_code_size_in_bytes"}


def compiled_memory_bytes(compiled) -> dict | None:
    """XLA's memory analysis of a compiled program, per device ({field: bytes}); None where the backend
    reports none."""
    try:
        memory = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    if memory is None:
        return None
    return {name: int(getattr(memory, attr, 0) or 0) for name, attr in MEMORY_FIELDS.items()}


def describe_memory_bytes(memory: dict | None, what: str = "train step") -> str:
    if memory is None:
        return f"{what} memory: analysis unavailable on this backend"
    return f"{what} memory per device: " + ", ".join(f"{name} {n / 2**20:.1f} MiB" for name, n in memory.items())
