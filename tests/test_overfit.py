"""Every family can memorise one tiny fixed batch through photon_jax.model.losses.loss_fn (the whole
training path: forward, loss alignment, gradients, and an optax update)."""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import tiny_config

from photon_jax.model import build_model
from photon_jax.model.losses import loss_fn

VOCAB = 64
SEQ = 32
STEPS = 200
THRESHOLD = 0.05  # measured: about 0.1 after 40 steps, 0.006 after 200, for all three
# LLVM optimisation off: the same computations, about half the compile time on a CPU.
JIT = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

CASES = {
    # name: (family, chunks, learning rate)
    "photon-L2": ("photon", (4, 4), 3e-3),
    "block-L1": ("photon", (4,), 3e-3),
    "vanilla": ("vanilla", (4, 4), 3e-3),
}


def fixed_batch():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, VOCAB, (2, SEQ))
    tokens[:, 0] = [3, 5]  # rows must differ from their first token on to be distinguishable
    return jnp.asarray(tokens, jnp.int32)


@pytest.mark.parametrize("name", list(CASES))
def test_overfits_one_batch(name):
    family, chunks, lr = CASES[name]
    seq_mult = SEQ // math.prod(chunks)
    cfg = tiny_config(family=family, chunks=chunks, seq_mult=seq_mult, vocab=VOCAB, width=32)
    assert cfg.data.seq_len == SEQ
    model = build_model(cfg.model)
    tokens = fixed_batch()
    mask = jnp.ones(tokens.shape, jnp.float32)
    params = nn.unbox(JIT(model.init)(jax.random.PRNGKey(0), tokens))["params"]
    optimizer = optax.adam(lr)
    opt_state = optimizer.init(params)

    def loss(p):
        logits, aux = model.apply({"params": p}, tokens)
        return loss_fn(cfg.model, logits, aux, tokens, mask)

    @JIT
    def step(p, state):
        (_, metrics), grads = jax.value_and_grad(loss, has_aux=True)(p)
        updates, state = optimizer.update(grads, state, p)
        return optax.apply_updates(p, updates), state, metrics["token_loss"]

    history = []
    for _ in range(STEPS + 1):  # the last call reports the loss after STEPS updates
        params, opt_state, token_loss = step(params, opt_state)
        history.append(token_loss)
    history = [float(x) for x in history]
    assert history[0] > 0.8 * math.log(VOCAB), history[0]  # starts near chance, ln 64 = 4.16
    assert all(math.isfinite(x) for x in history)
    final = history[-1]
    assert final < THRESHOLD, f"{name}: token loss {final:.3f} after {STEPS} steps (first {history[0]:.3f})"
