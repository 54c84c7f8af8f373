"""A roofline estimate of one compiled step on an accelerator we only compiled for (docs/aot.md).

    compute    = FLOPs per device / peak bf16 FLOP/s
    memory     = HBM bytes per device / HBM bandwidth
    collective = wire bytes per device (collectives.py) / interconnect bandwidth per direction
    step       = max(compute, memory) + collective     (no overlap of communication: the slow end)
                 max(compute, memory, collective)      (perfect overlap: the fast end)
    MFU        = model FLOPs per device / (step * peak), at both ends

FLOPs and bytes come from the compiler's cost analysis where it gives one (TPU: of the partitioned,
optimized program, recomputation included). XLA's GPU compiler reports none without a device, so on GPU
the FLOPs are the model's (model/accounting.py, so recomputation is not counted) and the bytes a floor
(every argument, output and temporary touched once). An estimate, labelled so: no kernel is timed.
"""

from __future__ import annotations

from photon_jax.scaleout.hardware import DeviceFacts


def cost_of(compiled) -> dict | None:
    """{flops, bytes} per device from XLA's cost analysis, or None where the backend gives none."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - deviceless GPU compiles raise or return None
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return {"flops": float(cost["flops"]), "bytes": float(cost.get("bytes accessed", 0.0))}


def estimate(facts: DeviceFacts, *, model_flops: float, cost: dict | None, memory: dict | None,
             wire_bytes: float, spans_hosts: bool) -> dict:
    """The roofline of one step on one device (every figure per device)."""
    if cost is not None:
        flops, hbm_bytes = cost["flops"], cost["bytes"]
        source = "XLA cost analysis of the compiled program"
    else:
        flops = model_flops
        memory = memory or {}
        hbm_bytes = float(sum(memory.get(k, 0) for k in ("arguments", "outputs", "temporaries")))
        source = ("model FLOPs (model/accounting.py) and a bytes floor (arguments + outputs + temporaries once): "
                  "this compiler gives no cost analysis without a device")
    link = facts.link_bytes_per_s
    if spans_hosts and facts.network_bytes_per_s:
        link = facts.network_bytes_per_s  # every collective at the between-nodes rate: the slow end
    compute_s, memory_s, collective_s = flops / facts.peak_bf16_flops, hbm_bytes / facts.hbm_bytes_per_s, \
        wire_bytes / link
    serial_s = max(compute_s, memory_s) + collective_s
    overlapped_s = max(compute_s, memory_s, collective_s)
    mfu = lambda seconds: round(model_flops / (seconds * facts.peak_bf16_flops), 4) if seconds else None  # noqa: E731
    return {
        "estimate": True, "source": source, "device": facts.name, "hardware_source": facts.source,
        "flops": flops, "model_flops": model_flops, "hbm_bytes": hbm_bytes, "wire_bytes": wire_bytes,
        "link_bytes_per_s": link, "compute_seconds": compute_s, "memory_seconds": memory_s,
        "collective_seconds": collective_s, "step_seconds": serial_s, "step_seconds_overlapped": overlapped_s,
        "mfu": mfu(serial_s), "mfu_overlapped": mfu(overlapped_s),
        "bound": max((("compute", compute_s), ("memory", memory_s), ("collectives", collective_s)),
                     key=lambda kv: kv[1])[0],
    }


def describe(roof: dict) -> list[str]:
    ms = lambda s: f"{s * 1e3:,.1f} ms"  # noqa: E731
    return [f"  roofline estimate (not a run; {roof['device']}): compute {ms(roof['compute_seconds'])}, HBM "
            f"{ms(roof['memory_seconds'])}, collectives {ms(roof['collective_seconds'])} -> step "
            f"{ms(roof['step_seconds_overlapped'])}-{ms(roof['step_seconds'])} ({roof['bound']}-bound), "
            f"estimated MFU {roof['mfu'] * 100:.1f}-{roof['mfu_overlapped'] * 100:.1f}%",
            f"    from: {roof['source']}"]
