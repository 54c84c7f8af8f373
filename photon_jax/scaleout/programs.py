"""The programs a sharded run compiles, lowered from abstract arguments that carry their shardings: the
train step, the eval step, and generation's prefill and decode. Nothing is allocated, so any mesh of
fake CPU devices can lower the 600M shapes; `audit` compiles each and collects what XLA's partitioner
could not reshard (remat_log.py).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from photon_jax.config import Config
from photon_jax.eval.metrics import make_eval_step
from photon_jax.generation import engine
from photon_jax.generation.sampling import GREEDY, sampling_kind
from photon_jax.model.hierarchy import Hierarchy, modes_for
from photon_jax.runs.workdir import params_layout
from photon_jax.scaleout.remat_log import compile_audited
from photon_jax.sharding import batch_sharding, check_batch, logical_rules, make_mesh
from photon_jax.train.state import learning_rate_schedule, make_optimizer, state_layout
from photon_jax.train.step import abstract_batch, train_step_program

PROGRAMS = ("train", "eval", "prefill", "decode")


def lower_train(cfg: Config, mesh, rules):
    tx, schedule = make_optimizer(cfg), learning_rate_schedule(cfg)
    layout = state_layout(cfg, tx, mesh, rules)
    step_fn, abstract = train_step_program(cfg, tx, schedule, layout, batch_sharding(mesh, rules))
    return step_fn.lower(*abstract)


def lower_eval(cfg: Config, mesh, rules):
    """The eval step as evaluation/evaluate.py jits it: params sharded, batch split, sums replicated."""
    batch = abstract_batch(cfg, batch_sharding(mesh, rules))
    eval_fn = jax.jit(make_eval_step(cfg), out_shardings=NamedSharding(mesh, PartitionSpec()))
    return eval_fn.lower(params_layout(cfg, mesh, rules).sharded_abstract(), batch)


def generation_spec(cfg: Config, mode: str, rows: int, prompt_len: int, new_tokens: int) -> engine.RunSpec:
    """The RunSpec generation.api.start_session builds for `rows` prompts of `prompt_len` tokens (the layers
    unrolled, as generation runs them)."""
    model = dataclasses.replace(cfg.model, scan_layers=False)
    if model.family == "vanilla":
        pad, cap = prompt_len, prompt_len + new_tokens
    else:
        hier = Hierarchy.of(model)
        pad = hier.prompt_pad(prompt_len)
        cap = max(hier.capacity(prompt_len + new_tokens), pad)
    return engine.RunSpec(model, mode, rows, 1, pad, cap, 0, sampling_kind(GREEDY), False)


def lower_generation(cfg: Config, mesh, rules, mode: str | None = None, prompt_len: int | None = None,
                     new_tokens: int = 8):
    """(prefill, decode) lowered for one batch of train.batch_size prompts, params in the mesh's layout
    and the per-row inputs replicated, as the generation API places them."""
    mode = mode or modes_for(cfg.model)[0]
    prompt_len = prompt_len or cfg.data.seq_len // 2
    spec = generation_spec(cfg, mode, cfg.train.batch_size, prompt_len, new_tokens)
    params = params_layout(dataclasses.replace(cfg, model=spec.cfg), mesh, rules).sharded_abstract()
    replicated = NamedSharding(mesh, PartitionSpec())
    rows = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=replicated)  # noqa: E731
    start_args = (params, rows(spec.groups, spec.prompt_pad), rows(spec.groups), rows(spec.rows), rows(spec.rows),
                  rows(spec.rows), rows(spec.rows, spec.cap))
    prefill = engine.lower_start(spec, *start_args)
    loop = engine.abstract_loop(spec, *start_args)
    loop = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), loop)
    scalar = lambda dt: jax.ShapeDtypeStruct((), dt, sharding=replicated)  # noqa: E731
    decode = engine.lower_decode(spec, params, loop, scalar(jnp.int32), scalar(jnp.int32), scalar(jnp.int32),
                                 scalar(jnp.float32), scalar(jnp.int32), scalar(jnp.float32))
    return prefill, decode


def lowered_programs(cfg: Config, programs=PROGRAMS, mode: str | None = None) -> dict:
    """{program name: jax Lowered} on cfg's mesh, under its logical rules."""
    mesh, rules = make_mesh(cfg.mesh), logical_rules(cfg.mesh)
    check_batch(mesh, rules, cfg.train.batch_size, jax.process_count())
    out = {}
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        if "train" in programs:
            out["train"] = lower_train(cfg, mesh, rules)
        if "eval" in programs:
            out["eval"] = lower_eval(cfg, mesh, rules)
        if "prefill" in programs or "decode" in programs:
            prefill, decode = lower_generation(cfg, mesh, rules, mode)
            out.update({k: v for k, v in (("prefill", prefill), ("decode", decode)) if k in programs})
    return out


def audit(cfg: Config, programs=PROGRAMS, mode: str | None = None, compiler_options=None) -> dict:
    """{program name: [Rematerialization]}: each program compiled afresh with XLA's warnings caught."""
    return {name: compile_audited(lowered, compiler_options)[1]
            for name, lowered in lowered_programs(cfg, programs, mode).items()}
