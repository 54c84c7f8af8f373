"""The dry run: the real train step (train/step.py's program) lowered from abstract arguments and compiled
for a mesh, without allocating state or reading data, then audited: memory per device, the collectives
it runs against the analytic floor, and XLA's involuntary rematerializations. `photon-jax train
--dry-run`, `bench train` and the tests all go through `audit_step` (docs/scale-out.md).
"""

from __future__ import annotations

import time

import flax.linen as nn
import jax

from photon_jax.config import Config
from photon_jax.model.projection import compiling_for
from photon_jax.scaleout.remat_log import compile_audited
from photon_jax.scaleout.report import TARGET_NOTES, communication, describe_communication
from photon_jax.sharding import batch_sharding, bytes_per_device, check_batch, describe_mesh, logical_rules, make_mesh
from photon_jax.train.state import learning_rate_schedule, make_optimizer, state_layout
from photon_jax.train.step import compiled_memory_bytes, train_step_program


def audit_step(cfg: Config, lowered, layout, mesh, in_sharding, compiler_options=None):
    """(compiled step, audit): the lowered train step compiled afresh (so the partitioner runs and its
    warnings are caught), with its memory per device, collectives vs the floor and rematerializations."""
    compiled, remats = compile_audited(lowered, compiler_options)
    return compiled, {"memory": compiled_memory_bytes(compiled),
                      "communication": communication(cfg, compiled, layout, mesh, in_sharding),
                      "rematerializations": [r.describe() for r in remats]}


def dry_run(cfg: Config, *, compiler_options=None, target: str | None = None) -> dict:
    """Lower and compile the train step for the current mesh; report parameter, optimizer-state and
    activation (XLA temporaries) bytes per device, the collectives the compiled step runs against the
    analytic floor, and XLA's involuntary rematerializations. `target` ("gpu" / "tpu") compiles that
    platform's code path on the devices at hand."""
    mesh = make_mesh(cfg.mesh)
    rules = logical_rules(cfg.mesh)
    check_batch(mesh, rules, cfg.train.batch_size, jax.process_count())
    tx, schedule = make_optimizer(cfg), learning_rate_schedule(cfg)
    in_sharding = batch_sharding(mesh, rules)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules), compiling_for(target):
        start = time.perf_counter()
        layout = state_layout(cfg, tx, mesh, rules)
        step_fn, abstract = train_step_program(cfg, tx, schedule, layout, in_sharding)
        lowered = step_fn.lower(*abstract)
        lower_s = time.perf_counter() - start
        start = time.perf_counter()
        _, audit = audit_step(cfg, lowered, layout, mesh, in_sharding, compiler_options)
        compile_s = time.perf_counter() - start
    memory = audit["memory"] or {}
    state_bytes = lambda key: bytes_per_device(layout.abstract[key], layout.shardings[key])  # noqa: E731
    return {
        "name": cfg.name, "mesh": describe_mesh(mesh), "devices": mesh.size, "platform": jax.devices()[0].platform,
        "processes": jax.process_count(), "batch_size": cfg.train.batch_size, "seq_len": cfg.data.seq_len,
        "params": int(sum(x.size for x in jax.tree.leaves(layout.abstract["params"]))),
        "per_device_bytes": {
            "params": state_bytes("params"), "optimizer": state_bytes("opt_state"),
            "activations": memory.get("temporaries"), "arguments": memory.get("arguments"),
            "outputs": memory.get("outputs"), "aliased": memory.get("aliased"), "code": memory.get("code"),
        },
        "lower_seconds": round(lower_s, 2), "compile_seconds": round(compile_s, 2),
        "target": target or jax.devices()[0].platform, "target_note": TARGET_NOTES.get(target or ""),
        "communication": audit["communication"], "rematerializations": audit["rematerializations"],
    }


def _gib(n) -> str:
    if n is None:
        return "n/a"
    return f"{n / 2**30:.3f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def describe_dry_run(report: dict) -> str:
    b = report["per_device_bytes"]
    lines = [f"dry run: {report['name']} ({report['params']:,} params), mesh {report['mesh']} "
             f"({report['devices']} {report['platform']} devices, {report['processes']} process(es)), "
             f"batch {report['batch_size']} x {report['seq_len']}",
             f"  per device: parameters {_gib(b['params'])}, optimizer state {_gib(b['optimizer'])}, "
             f"activations (temporaries) {_gib(b['activations'])}",
             f"  XLA: arguments {_gib(b['arguments'])}, outputs {_gib(b['outputs'])} "
             f"(aliased with arguments {_gib(b['aliased'])}), code {_gib(b['code'])}",
             f"  lowered in {report['lower_seconds']:.1f} s, compiled in {report['compile_seconds']:.1f} s"
             f" (code path: {report['target']})"]
    if report["target_note"]:
        lines.append(f"  note: {report['target_note']}")
    lines += describe_communication(report["communication"], len(report["rematerializations"]))
    return "\n".join(lines)
