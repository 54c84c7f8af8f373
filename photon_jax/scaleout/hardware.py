"""Public figures of the accelerators we compile for, each with its source: memory per device, dense bf16
peak, HBM bandwidth and the interconnect one device drives. The roofline (roofline.py) and the memory
verdict of a deviceless compile (docs/aot.md) read them; nothing here is measured.
"""

from __future__ import annotations

import dataclasses

GB = 10**9
GIB = 2**30


@dataclasses.dataclass(frozen=True)
class DeviceFacts:
    name: str                 # our short name: the topology prefix (v5e, h100, ...)
    platform: str             # "tpu" | "gpu"
    device_kinds: tuple       # lower-case substrings of jax's device_kind that identify it
    memory_bytes: int         # HBM per device
    peak_bf16_flops: float    # dense (no sparsity) bf16 FLOP/s per device
    hbm_bytes_per_s: float
    link_bytes_per_s: float   # what one device sends per second over its interconnect (one direction)
    network_bytes_per_s: float | None  # GPUs: per-GPU bandwidth between nodes (None: one interconnect)
    devices_per_host: int
    source: str


# TPU ICI figures are the vendor's bidirectional per-chip numbers, halved for one direction.
FACTS = (
    DeviceFacts("v5e", "tpu", ("tpu v5 lite", "tpu v5e"), 16 * GB, 197e12, 819 * GB, 400 * GB / 2, None, 8,
                "cloud.google.com/tpu/docs/v5e: 197 TFLOP/s bf16, 16 GB HBM2 at 819 GB/s, ICI 400 GB/s "
                "bidirectional per chip"),
    DeviceFacts("v5p", "tpu", ("tpu v5p", "tpu v5"), 95 * GIB, 459e12, 2765 * GB, 1200 * GB / 2, None, 4,
                "cloud.google.com/tpu/docs/v5p: 459 TFLOP/s bf16, 95 GiB HBM2e at 2765 GB/s, ICI 1200 GB/s "
                "bidirectional per chip"),
    DeviceFacts("v6e", "tpu", ("tpu v6 lite", "tpu v6e"), 32 * GB, 918e12, 1638 * GB, 800 * GB / 2, None, 8,
                "cloud.google.com/tpu/docs/v6e: 918 TFLOP/s bf16, 32 GB HBM at 1638 GB/s, ICI 800 GB/s "
                "bidirectional per chip"),
    DeviceFacts("h100", "gpu", ("h100",), 80 * GB, 989e12, 3350 * GB, 450 * GB, 50 * GB, 8,
                "NVIDIA H100 SXM datasheet: 989 TFLOP/s dense bf16, 80 GB HBM3 at 3.35 TB/s, NVLink 900 GB/s "
                "bidirectional; 400 Gb/s InfiniBand per GPU between nodes"),
    DeviceFacts("h200", "gpu", ("h200",), 141 * GB, 989e12, 4800 * GB, 450 * GB, 50 * GB, 8,
                "NVIDIA H200 SXM datasheet: 989 TFLOP/s dense bf16, 141 GB HBM3e at 4.8 TB/s, NVLink 900 GB/s "
                "bidirectional; 400 Gb/s InfiniBand per GPU between nodes"),
    DeviceFacts("a100", "gpu", ("a100",), 80 * GB, 312e12, 2039 * GB, 300 * GB, 25 * GB, 8,
                "NVIDIA A100 SXM 80GB datasheet: 312 TFLOP/s dense bf16, 80 GB HBM2e at 2039 GB/s, NVLink "
                "600 GB/s bidirectional; 200 Gb/s InfiniBand per GPU between nodes"),
)
BY_NAME = {f.name: f for f in FACTS}


def facts_for_kind(device_kind: str) -> DeviceFacts | None:
    """The table's entry for a jax device_kind (e.g. "TPU v5 lite", "NVIDIA H100 80GB HBM3"), or None. The
    first entry whose substring matches wins (v5e's "tpu v5 lite" sits before v5p's "tpu v5")."""
    kind = device_kind.lower()
    return next((f for f in FACTS if any(k in kind for k in f.device_kinds)), None)
