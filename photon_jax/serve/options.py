"""The server's options and their defaults (no web libraries: the CLI reads these to build its --help)."""

from __future__ import annotations

import dataclasses

GIB = 1 << 30
DEFAULT_KV_BUDGET_GIB = 1.0


@dataclasses.dataclass
class ServeOptions:
    mode: str | None = None
    max_context: int = 512
    kv_budget_gib: float | None = None  # default DEFAULT_KV_BUDGET_GIB unless slots is given
    slots: int | None = None
    max_queue: int = 64
    align: bool = True
    decode_steps: int = 4  # most decode steps per device call (tokens are read back once per call)
    admit_batch: int = 8  # most requests prefilled by one insert call
    request_timeout_s: float | None = 600.0
    warm_up: bool = True
