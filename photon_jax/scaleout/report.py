"""One compiled step's scale-out report: XLA's involuntary rematerializations, the collectives it runs
per device against the analytic floor (analytic.py), and what the accelerator path left out."""

from __future__ import annotations

from jax.sharding import NamedSharding

from photon_jax.config import Config
from photon_jax.scaleout import analytic
from photon_jax.scaleout.collectives import KINDS, collectives

TARGETS = ("cpu", "gpu", "tpu")
# What a CPU box cannot lower of an accelerator's step, and so compiles with the XLA reference instead.
TARGET_NOTES = {
    "gpu": "attention on the XLA path (cuDNN / Pallas flash attention cannot be lowered on CPU devices): "
           "temporaries include the (T, T) attention scores the GPU kernels never hold",
    "tpu": "attention on the XLA path (the Pallas TPU flash kernel cannot be lowered on CPU devices): "
           "temporaries include the (T, T) attention scores the TPU kernel never holds",
}


def batch_axes(in_sharding: NamedSharding) -> tuple[str, ...]:
    entry = in_sharding.spec[0] if len(in_sharding.spec) else None
    return () if entry is None else (tuple(entry) if isinstance(entry, (tuple, list)) else (entry,))


def communication(cfg: Config, compiled, layout, mesh, in_sharding) -> dict:
    """Compiled vs analytic collectives of a train step, per device per step."""
    compiled_c = collectives(compiled.as_text(), mesh.size)
    floor = analytic.estimate(cfg, layout.abstract["params"], layout.shardings["params"], mesh,
                              batch_axes(in_sharding))
    compiled_wire, floor_wire = compiled_c["total"]["wire_bytes"], floor["total"]["wire_bytes"]
    return {"compiled": compiled_c, "analytic": floor,
            "compiled_over_analytic": round(compiled_wire / floor_wire, 3) if floor_wire else None}


def _mib(n) -> str:
    return f"{n / 2**20:,.1f} MiB"


def describe_communication(comm: dict, rematerializations: int | None = None) -> list[str]:
    c, a = comm["compiled"], comm["analytic"]
    lines = ["  collectives per device per step (compiled: count, result bytes, wire bytes | analytic wire bytes):"]
    for kind in KINDS:
        entry = c[kind]
        floor = a.get(kind, {}).get("wire_bytes")
        if not entry["count"] and not floor:
            continue
        floor_text = _mib(floor) if floor is not None else "-"
        lines.append(f"    {kind:<19} {entry['count']:>5}  {_mib(entry['bytes']):>12}  {_mib(entry['wire_bytes']):>12}"
                     f" | {floor_text:>12}")
    ratio = comm["compiled_over_analytic"]
    lines.append(f"    {'total':<19} {c['total']['count']:>5}  {_mib(c['total']['bytes']):>12}  "
                 f"{_mib(c['total']['wire_bytes']):>12} | {_mib(a['total']['wire_bytes']):>12}"
                 + (f"  (compiled / analytic {ratio:.2f}x)" if ratio is not None else ""))
    if rematerializations is not None:
        lines.append(f"  involuntary full rematerializations (XLA SPMD): {rematerializations}")
    return lines
