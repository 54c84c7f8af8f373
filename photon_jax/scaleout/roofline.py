"""A roofline estimate of one compiled step on an accelerator we only compiled for (docs/aot.md).

    compute    = model FLOPs per device x recompute / peak bf16 FLOP/s
    memory     = HBM bytes per device / HBM bandwidth
    collective = wire bytes per device (collectives.py, loop trips counted) / interconnect bandwidth
    step       = max(compute, memory) + collective     (no overlap of communication: the slow end)
                 max(compute, memory, collective)      (perfect overlap: the fast end)
    MFU        = model FLOPs per device / (step * peak), at both ends

Model FLOPs are model/accounting.py's (matmuls and attention, backward = 2x forward); remat=full runs
the forward twice (recompute 4/3). HBM bytes are a floor: the step's arguments and outputs moved once and
its temporaries written and read once. XLA's own cost analysis is not used: it counts a while loop's body
once (a scanned stack's layers once), and the GPU compiler gives none without a device. An estimate,
labelled so: no kernel is timed.
"""

from __future__ import annotations

from photon_jax.scaleout.hardware import DeviceFacts

RECOMPUTE = {"none": 1.0, "dots": 1.0, "full": 4.0 / 3.0}  # "dots" keeps matmul outputs: only elementwise reruns


def estimate(facts: DeviceFacts, *, model_flops: float, remat: str, memory: dict | None, wire_bytes: float,
             spans_hosts: bool) -> dict:
    """The roofline of one step on one device (every figure per device)."""
    flops = model_flops * RECOMPUTE.get(remat, 1.0)
    memory = memory or {}
    hbm_bytes = float(memory.get("arguments", 0) + memory.get("outputs", 0) + 2 * memory.get("temporaries", 0))
    link = facts.link_bytes_per_s
    if spans_hosts and facts.network_bytes_per_s:
        link = facts.network_bytes_per_s  # every collective at the between-nodes rate: the slow end
    compute_s, memory_s = flops / facts.peak_bf16_flops, hbm_bytes / facts.hbm_bytes_per_s
    collective_s = wire_bytes / link
    serial_s = max(compute_s, memory_s) + collective_s
    overlapped_s = max(compute_s, memory_s, collective_s)
    mfu = lambda seconds: round(model_flops / (seconds * facts.peak_bf16_flops), 4) if seconds else None  # noqa: E731
    return {
        "estimate": True, "device": facts.name, "hardware_source": facts.source, "flops": flops,
        "model_flops": model_flops, "recompute": RECOMPUTE.get(remat, 1.0), "hbm_bytes_floor": hbm_bytes,
        "wire_bytes": wire_bytes, "link_bytes_per_s": link, "compute_seconds": compute_s,
        "memory_seconds": memory_s, "collective_seconds": collective_s, "step_seconds": serial_s,
        "step_seconds_overlapped": overlapped_s, "mfu": mfu(serial_s), "mfu_overlapped": mfu(overlapped_s),
        "bound": max((("compute", compute_s), ("memory", memory_s), ("collectives", collective_s)),
                     key=lambda kv: kv[1])[0],
    }


def describe(roof: dict) -> list[str]:
    ms = lambda s: f"{s * 1e3:,.1f} ms"  # noqa: E731
    return [f"  roofline estimate (not a run; {roof['device']}): compute {ms(roof['compute_seconds'])}, HBM "
            f"{ms(roof['memory_seconds'])}, collectives {ms(roof['collective_seconds'])} -> step "
            f"{ms(roof['step_seconds_overlapped'])}-{ms(roof['step_seconds'])} ({roof['bound']}-bound), "
            f"estimated MFU {roof['mfu'] * 100:.1f}-{roof['mfu_overlapped'] * 100:.1f}%",
            f"    model FLOPs x recompute {roof['recompute']:.2f}, HBM floor "
            f"{roof['hbm_bytes_floor'] / 2**30:.2f} GiB, "
            f"collectives at {roof['link_bytes_per_s'] / 1e9:.0f} GB/s; figures: {roof['hardware_source']}"]
