"""The dry run: the real train step (train/step.py's program) lowered from abstract arguments and compiled
for a mesh, without allocating state or reading data, then audited: memory per device, the collectives
it runs against the analytic floor, and XLA's involuntary rematerializations. `photon-jax train
--dry-run`, `bench train` and the tests all go through `audit_step` (docs/scale-out.md).
"""

from __future__ import annotations

import collections
import re
import time

import flax.linen as nn
import jax

from pallas_kernels.common import compiling_on
from photon_jax.config import Config
from photon_jax.errors import UserError
from photon_jax.model.accounting import train_flops_per_token
from photon_jax.model.projection import compiling_for
from photon_jax.scaleout import roofline
from photon_jax.scaleout.remat_log import compile_audited
from photon_jax.scaleout.report import TARGET_NOTES, communication, describe_communication
from photon_jax.scaleout.topology import DEVICELESS_OPTIONS, devices_for
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


def dry_run(cfg: Config, *, compiler_options=None, target: str | None = None, topology: str | None = None) -> dict:
    """Lower and compile the train step for the current mesh; report parameter, optimizer-state and
    activation (XLA temporaries) bytes per device, the collectives the compiled step runs against the
    analytic floor, and XLA's involuntary rematerializations. `target` ("gpu" / "tpu") compiles that
    platform's code path on the devices at hand; `topology` ("v5e:4x4", "h100:8": topology.py) compiles
    for that accelerator with its real compiler, deviceless, and adds the device's memory verdict and a
    roofline estimate of the step."""
    topo = devices_for(topology) if topology else None
    mesh = make_mesh(cfg.mesh, topo.devices if topo else None)
    rules = logical_rules(cfg.mesh)
    check_batch(mesh, rules, cfg.train.batch_size, topo.hosts if topo else jax.process_count())
    platform = topo.platform if topo else target
    if topo is not None:
        compiler_options = {**DEVICELESS_OPTIONS[topo.platform], **(compiler_options or {})}
    tx, schedule = make_optimizer(cfg), learning_rate_schedule(cfg)
    in_sharding = batch_sharding(mesh, rules)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules), compiling_for(platform), \
            compiling_on(topo.platform if topo else None):
        start = time.perf_counter()
        layout = state_layout(cfg, tx, mesh, rules)
        step_fn, abstract = train_step_program(cfg, tx, schedule, layout, in_sharding)
        lowered = step_fn.lower(*abstract)
        lower_s = time.perf_counter() - start
        start = time.perf_counter()
        try:
            compiled, audit = audit_step(cfg, lowered, layout, mesh, in_sharding, compiler_options)
        except jax.errors.JaxRuntimeError as e:
            if topo is None:
                raise
            refusal = out_of_memory(e)
            if refusal is None:  # the accelerator's compiler rejected the program: say so in its words
                first = next((ln for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
                raise UserError(f"the {topo.platform.upper()} compiler rejected the step for {topo.name}: "
                                f"{first.strip()[:400]}") from None
            compiled, audit = None, {"memory": None, "communication": None, "rematerializations": []}
        compile_s = time.perf_counter() - start
    memory = audit["memory"] or {}
    state_bytes = lambda key: bytes_per_device(layout.abstract[key], layout.shardings[key])  # noqa: E731
    report = {
        "name": cfg.name, "mesh": describe_mesh(mesh), "devices": mesh.size,
        "platform": topo.platform if topo else jax.devices()[0].platform,
        "device_kind": mesh.devices.flat[0].device_kind,
        "processes": topo.hosts if topo else jax.process_count(), "batch_size": cfg.train.batch_size,
        "seq_len": cfg.data.seq_len,
        "params": int(sum(x.size for x in jax.tree.leaves(layout.abstract["params"]))),
        "per_device_bytes": {
            "params": state_bytes("params"), "optimizer": state_bytes("opt_state"),
            "activations": memory.get("temporaries"), "arguments": memory.get("arguments"),
            "outputs": memory.get("outputs"), "aliased": memory.get("aliased"), "code": memory.get("code"),
        },
        "lower_seconds": round(lower_s, 2), "compile_seconds": round(compile_s, 2),
        "target": platform or jax.devices()[0].platform,
        "target_note": None if topo else TARGET_NOTES.get(target or ""),
        "topology": topo.name if topo else None,
        "communication": audit["communication"], "rematerializations": audit["rematerializations"],
    }
    if compiled is None:  # the compiler refused: it does not fit (TPU's compiler checks HBM itself)
        report["fit"] = {"fits": False, "compiler_error": refusal["message"], "peak_bytes": refusal["required"],
                         "capacity_bytes": refusal["available"],
                         "headroom_bytes": None if refusal["required"] is None
                         else refusal["available"] - refusal["required"]}
    else:
        report["custom_calls"] = custom_calls(compiled.as_text())
    if compiled is not None and topo is not None and topo.facts is not None:
        report["fit"] = device_fit(memory, topo.facts.memory_bytes)
        tokens = cfg.train.batch_size * cfg.data.seq_len
        report["roofline"] = roofline.estimate(
            topo.facts, model_flops=train_flops_per_token(cfg.model, cfg.data.seq_len) * tokens / mesh.size,
            remat=cfg.model.remat, memory=memory,
            wire_bytes=audit["communication"]["compiled"]["total"]["wire_bytes"], spans_hosts=topo.hosts > 1)
    return report


_OOM = re.compile(r"RESOURCE_EXHAUSTED: (Ran out of memory|.*exceeds available HBM)", re.IGNORECASE)
_SIZE = re.compile(r"\(([\d.]+)([KMGT])\)")


def out_of_memory(error: Exception) -> dict | None:
    """{message, required, available} when a compiler refused a program for want of device memory (the TPU
    compiler checks HBM while it assigns buffers: "... (36.37G) exceeds available HBM (15.75G)"), else None."""
    text = str(error)
    if not _OOM.search(text):
        return None
    line = next(ln for ln in text.splitlines() if "RESOURCE_EXHAUSTED" in ln)
    sizes = [float(n) * 2 ** (10 * "KMGT".index(unit) + 10) for n, unit in _SIZE.findall(line)]
    required, available = (int(sizes[0]), int(sizes[-1])) if len(sizes) >= 2 else (None, None)
    return {"message": line.strip()[:300], "required": required, "available": available}


def custom_calls(hlo_text: str) -> dict:
    """{custom call target: count} in a compiled program: a Pallas kernel shows as its compiler's call
    (Mosaic's tpu_custom_call, Triton's __gpu$xla.gpu.triton), so the report says which kernels really ran."""
    return dict(sorted(collections.Counter(re.findall(r'custom_call_target="([^"]+)"', hlo_text)).items()))


def device_fit(memory: dict, capacity: int) -> dict:
    """What the compiled step holds at its peak on one device (arguments, outputs not aliased with
    them, temporaries, code) against the device's memory."""
    peak = sum(memory.get(k, 0) for k in ("arguments", "outputs", "temporaries", "code")) - memory.get("aliased", 0)
    return {"peak_bytes": peak, "capacity_bytes": capacity, "fits": peak <= capacity,
            "headroom_bytes": capacity - peak}


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
             f" (code path: {report['target']}" + (f", compiled for {report['topology']} by its own compiler, "
                                                    "no device)" if report.get("topology") else ")")]
    if report["target_note"]:
        lines.append(f"  note: {report['target_note']}")
    if fit := report.get("fit"):
        verdict = "fits" if fit["fits"] else "DOES NOT FIT"
        short = None if fit["headroom_bytes"] is None else abs(fit["headroom_bytes"])
        lines.append(f"  {report['device_kind']} ({_gib(fit['capacity_bytes'])}): step peak {_gib(fit['peak_bytes'])}"
                     f" -> {verdict}, {'headroom' if fit['fits'] else 'short by'} {_gib(short)}")
        if fit.get("compiler_error"):
            lines.append(f"  the compiler refused the step: {fit['compiler_error']}")
    if report.get("custom_calls"):
        lines.append("  custom calls in the compiled step: "
                     + ", ".join(f"{name} x{n}" for name, n in report["custom_calls"].items()))
    if report["communication"] is not None:
        lines += describe_communication(report["communication"], len(report["rematerializations"]))
    if roof := report.get("roofline"):
        lines += roofline.describe(roof)
    return "\n".join(lines)
