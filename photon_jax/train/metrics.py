"""Metric sinks (JSONL + TensorBoard, process 0 only) and throughput / MFU accounting."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp

# Dense bf16 peak FLOP/s per device by device kind (vendor figures).
PEAK_FLOPS = {
    "h200": 989e12, "h100": 989e12, "a100": 312e12, "l4": 121e12,
    "tpu v4": 275e12, "tpu v5 lite": 197e12, "tpu v5e": 197e12, "tpu v5p": 459e12, "tpu v6 lite": 918e12,
}


def peak_flops_per_device() -> tuple[float, str]:
    """(peak FLOP/s, how it was obtained). CPUs have no table entry: measure an fp32 matmul."""
    kind = jax.devices()[0].device_kind.lower()
    for name, flops in PEAK_FLOPS.items():
        if name in kind:
            return flops, f"{kind} datasheet"
    n = 1024
    x = jnp.ones((n, n), jnp.float32)
    matmul = jax.jit(lambda a: a @ a)
    matmul(x).block_until_ready()
    start = time.perf_counter()
    reps = 5
    for _ in range(reps):
        out = matmul(x)
    out.block_until_ready()
    return 2 * n ** 3 * reps / (time.perf_counter() - start), f"{kind}: measured fp32 matmul"


class MetricWriter:
    def __init__(self, workdir: Path, enabled: bool = True):
        self.enabled = enabled
        self._tb = None
        if not enabled:
            return
        self._jsonl = open(workdir / "metrics.jsonl", "a")
        try:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(workdir / "tensorboard"))
        except ImportError:  # TensorBoard events are optional; JSONL is always written
            self._tb = None

    def write(self, step: int, split: str, values: dict) -> None:
        if not self.enabled:
            return
        record = {"step": step, "split": split, **{k: float(v) for k, v in values.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(f"{split}/{key}", float(value), step)

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            if self._tb is not None:
                self._tb.close()
