"""`bench train`: tokens/s and MFU of the real train step, for several models in one run.

Each model's step is the program training runs (train.step.train_step_program with the optimizer
of train.state and the state shardings of train.state.state_layout), compiled and audited by
scaleout.dry_run.audit_step as the dry run does, on the config's mesh (over the first --devices
devices), on a fixed batch of random tokens. Compilation and --warmup steps are excluded; the step
time is the median over --steps timed steps. MFU = tokens/s x analytic train FLOPs per token / (peak
FLOP/s per device x devices), peak from train.metrics.peak_flops_per_device (a datasheet entry, or a
measured fp32 matmul on CPU).
Ratios against the first vanilla model: analytic FLOPs per token, measured time per token,
and FLOPs per token per parameter (the paper's "same parameters" comparison).
"""

from __future__ import annotations

import dataclasses
import gc
import time
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from photon_jax.bench.models import BenchModel, random_params, reference_model
from photon_jax.bench.timing import median, timed
from photon_jax.config import Config
from photon_jax.errors import UserError
from photon_jax.model.accounting import count_params, train_flops_per_token
from photon_jax.model.attention import uses_fused
from photon_jax.model.projection import compiling_for
from photon_jax.reports.output import envelope
from photon_jax.scaleout.dry_run import audit_step
from photon_jax.scaleout.report import TARGET_NOTES
from photon_jax.sharding import batch_sharding, logical_rules, make_mesh
from photon_jax.train.metrics import peak_flops_per_device
from photon_jax.train.state import learning_rate_schedule, make_optimizer, state_layout
from photon_jax.train.step import train_step_program


def bench_config(cfg: Config, batch_size: int | None, seq_len: int | None) -> Config:
    """The model's config with the benchmark's batch size / sequence length (validated)."""
    train = dataclasses.replace(cfg.train, batch_size=batch_size or cfg.train.batch_size)
    data = dataclasses.replace(cfg.data, seq_len=seq_len or cfg.data.seq_len)
    return dataclasses.replace(cfg, train=train, data=data).validate()


def _random_state(cfg: Config, tx, layout):
    params = random_params(cfg.model, seed=cfg.train.seed)
    state = {"step": jnp.zeros((), jnp.int32), "skipped": jnp.zeros((), jnp.int32), "params": params,
             "opt_state": tx.init(params)}
    return jax.device_put(state, layout.shardings)


def bench_one(cfg: Config, steps: int, warmup: int, devices: int | None = None, seed: int = 0,
              target: str | None = None) -> dict:
    t = cfg.train
    mesh = make_mesh(cfg.mesh, jax.devices()[:devices] if devices else None)
    rules = logical_rules(cfg.mesh)
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if t.batch_size % shards:
        raise UserError(f"--batch-size {t.batch_size} is not divisible by the {shards} data-parallel devices")
    tx, schedule = make_optimizer(cfg), learning_rate_schedule(cfg)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        layout = state_layout(cfg, tx, mesh, rules)
        in_sharding = batch_sharding(mesh, rules)
        state = _random_state(cfg, tx, layout)
        rng = np.random.default_rng(seed)
        tokens = rng.integers(0, cfg.model.vocab_size, size=(t.batch_size, cfg.data.seq_len), dtype=np.int32)
        batch = {"tokens": jax.device_put(tokens, in_sharding),
                 "mask": jax.device_put(np.ones(tokens.shape, np.float32), in_sharding)}
        step_fn, _ = train_step_program(cfg, tx, schedule, layout, in_sharding)  # lowered on the real arrays
        start = time.perf_counter()
        with compiling_for(target):  # the accelerator's code path, timed on these devices (docs/scale-out.md)
            lowered = step_fn.lower(state, batch)
        compiled, audit = audit_step(cfg, lowered, layout, mesh, in_sharding)
        compile_s = time.perf_counter() - start
        for _ in range(warmup):
            (state, _), _ = timed(compiled, state, batch)
        times = []
        metrics = None
        for _ in range(steps):
            (state, metrics), seconds = timed(compiled, state, batch)
            times.append(seconds)
        loss = float(metrics["loss"]) if metrics is not None else float("nan")
    del state
    gc.collect()
    return {"compile_s": compile_s, "step_times_s": times, "step_time_s": median(times), "final_loss": loss,
            "devices": int(np.prod(list(mesh.shape.values()))), "memory": audit["memory"],
            "peak_device_bytes": device_peak_bytes(), "communication": audit["communication"],
            "rematerializations": audit["rematerializations"]}


def device_peak_bytes() -> int | None:
    """Peak bytes the first device's allocator has held (GPU/TPU), None where the backend does not say."""
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001
        return None
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def run_train(models: list[BenchModel], steps: int, warmup: int, batch_size: int | None, seq_len: int | None,
              devices: int | None = None, overrides: list[str] = (), log: Callable[[str], None] = print,
              target: str | None = None) -> dict:
    if devices is not None and not 1 <= devices <= jax.device_count():
        raise UserError(f"--devices must be in [1, {jax.device_count()}], got {devices}")
    configs = [(m, bench_config(m.cfg, batch_size, seq_len)) for m in models]  # validate all first
    peak, peak_source = peak_flops_per_device()
    results = []
    for m, cfg in configs:
        log(f"[train] {m.name}: batch {cfg.train.batch_size} x seq {cfg.data.seq_len}, {steps} timed steps")
        run = bench_one(cfg, steps, warmup, devices, target=target)
        tokens = cfg.train.batch_size * cfg.data.seq_len
        tps = tokens / run["step_time_s"]
        flops = train_flops_per_token(cfg.model, cfg.data.seq_len)
        results.append({
            "model": m.name, "family": m.family, "params": count_params(cfg.model), "seq_len": cfg.data.seq_len,
            "batch_size": cfg.train.batch_size, "tokens_per_step": tokens, "step_time_s": run["step_time_s"],
            "step_times_s": run["step_times_s"], "tokens_per_s": tps, "train_flops_per_token": flops,
            "achieved_flops_per_s": tps * flops, "mfu": tps * flops / (peak * run["devices"]),
            "compile_s": run["compile_s"], "devices": run["devices"], "final_loss": run["final_loss"],
            "remat": cfg.model.remat, "attention": "fused" if uses_fused(cfg.model.attention_impl) else "reference",
            "step_memory_bytes": run["memory"], "peak_device_bytes": run["peak_device_bytes"],
            "communication": run["communication"], "rematerializations": run["rematerializations"],
            "vs_reference": None})
    reference = reference_model(models)
    notes = []
    if reference is None:
        notes.append("no vanilla model in --models: no ratios")
    else:
        ref = next(r for r in results if r["model"] == reference)
        for r in results:
            r["vs_reference"] = {
                "reference": reference,
                "params_ratio": r["params"] / ref["params"],
                "flops_per_token_ratio": r["train_flops_per_token"] / ref["train_flops_per_token"],
                "flops_per_token_per_param_ratio": (r["train_flops_per_token"] / r["params"])
                / (ref["train_flops_per_token"] / ref["params"]),
                "time_per_token_ratio": ref["tokens_per_s"] / r["tokens_per_s"],
                "tokens_per_s_ratio": r["tokens_per_s"] / ref["tokens_per_s"],
            }
    settings = {"steps": steps, "warmup": warmup, "batch_size": batch_size, "seq_len": seq_len,
                "target": target or jax.devices()[0].platform, "target_note": TARGET_NOTES.get(target or ""),
                "devices": devices or jax.device_count(),
                "models": [m.name for m in models], "overrides": list(overrides), "peak_flops_per_device": peak,
                "peak_source": peak_source, "flops": "analytic model FLOPs (fwd + bwd = 3x fwd, no remat), "
                                                     "embedding lookups free (accounting.train_flops_per_token)"}
    return envelope("train", settings, reference, results, notes)
