"""Metric sinks (JSONL + TensorBoard, process 0 only) and throughput / MFU accounting."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import jax
import jax.numpy as jnp

from photon_jax.errors import UserError

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


def start_wandb(workdir: Path, project: str, mode: str, name: str, config: dict):
    """A Weights & Biases run for this work directory: the same run id on every resume (kept in
    <workdir>/wandb_run_id), files under <workdir>/wandb; mode online / offline / disabled
    ("" = wandb's default, or the WANDB_MODE environment variable)."""
    try:
        import wandb
    except ImportError:
        raise UserError("train.wandb_project is set but wandb is not installed: pip install 'photon-jax[wandb]'") \
            from None
    id_file = workdir / "wandb_run_id"
    run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
    id_file.write_text(run_id)
    try:
        return wandb.init(project=project, name=name, id=run_id, resume="allow", dir=str(workdir), config=config,
                          mode=mode or None, reinit="finish_previous")
    except Exception as e:  # wandb raises its own errors (no API key, no network, bad mode)
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot start the wandb run ({detail}); train.wandb_mode=offline logs without an account") \
            from None


class MetricWriter:
    """metrics.jsonl (always), TensorBoard events (when tensorboardX is installed), and a Weights & Biases
    run (when `wandb` is given: project, mode, name, config); only process 0 writes."""

    def __init__(self, workdir: Path, enabled: bool = True, wandb: dict | None = None):
        self.enabled = enabled
        self._tb = None
        self._wandb = None
        if not enabled:
            return
        if wandb and wandb.get("project"):
            self._wandb = start_wandb(workdir, **wandb)
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
        if self._wandb is not None:
            self._wandb.log({f"{split}/{k}": float(v) for k, v in values.items()}, step=step)

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            if self._tb is not None:
                self._tb.close()
            if self._wandb is not None:
                self._wandb.finish()
