"""Result files: the JSON envelope every benchmark writes (schema_version, environment facts, settings,
results, notes), strict JSON on disk, and a check that an output path is writable before any work runs."""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
from pathlib import Path

import jax

from photon_jax import host_allocator
from photon_jax.errors import UserError

SCHEMA_VERSION = 1
GIB = 2 ** 30


def environment() -> dict:
    dev = jax.devices()[0]
    return {"backend": jax.default_backend(), "device_kind": dev.device_kind, "device_count": jax.device_count(),
            "jax_version": jax.__version__, "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "host_allocator": host_allocator.state()}


def envelope(benchmark: str, settings: dict, reference: str | None, results: list[dict], notes: list[str]) -> dict:
    return {"schema_version": SCHEMA_VERSION, "benchmark": benchmark,
            "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "environment": environment(), "settings": settings, "reference": reference, "results": results,
            "notes": notes}


def _clean(obj):
    """NaN / inf -> None so the file is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_json(path: str, data: dict) -> None:
    try:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(_clean(data), indent=2) + "\n")
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror}") from None


def check_writable(path: str | None, flag: str) -> None:
    """Fail before any benchmark work when an output path cannot be written."""
    if not path:
        return
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{flag} {path} is a directory; give a file name")
    parent = p.parent if str(p.parent) else Path(".")
    existing = next(d for d in (parent, *parent.parents) if d.exists())  # write_json makes the missing ones
    if not existing.is_dir():
        raise UserError(f"{flag} {path}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK):
        raise UserError(f"{flag} {path}: directory {existing} is not writable")
