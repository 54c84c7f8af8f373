"""Safetensors directories as Hugging Face writes them: one `model.safetensors`, or shards
`model-0000i-of-0000n.safetensors` with a `model.safetensors.index.json` (weight name -> file).

Reading is lazy, tensor by tensor (safe_open memory-maps each file), so importing a sharded
checkpoint never holds more than the tensor being converted plus the result.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from photon_jax.errors import UserError

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
DEFAULT_SHARD_BYTES = 2 << 30


def write_safetensors(tensors: dict[str, np.ndarray], out_dir: Path, max_shard_bytes: int = DEFAULT_SHARD_BYTES,
                      metadata: dict[str, str] | None = None) -> list[Path]:
    """Write `tensors` (in the given order) into one file, or into shards plus an index when they exceed
    `max_shard_bytes`; returns the files written."""
    shards, current, size = [], {}, 0
    for name, array in tensors.items():
        array = np.ascontiguousarray(array)
        if current and size + array.nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = array
        size += array.nbytes
    shards.append(current)
    meta = {"format": "np", **(metadata or {})}
    if len(shards) == 1:
        path = out_dir / SINGLE
        save_file(shards[0], str(path), metadata=meta)
        return [path]
    paths, weight_map = [], {}
    for i, shard in enumerate(shards, 1):
        path = out_dir / f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path), metadata=meta)
        paths.append(path)
        weight_map.update({name: path.name for name in shard})
    total = sum(a.nbytes for a in tensors.values())
    (out_dir / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return paths + [out_dir / INDEX]


class TensorReader:
    """Names and lazily loaded tensors of a safetensors directory (single file or index + shards)."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory).expanduser()
        if (self.dir / INDEX).is_file():
            try:
                self.weight_map = json.loads((self.dir / INDEX).read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise UserError(f"{self.dir / INDEX} is not a safetensors index (no weight_map)") from None
        elif (self.dir / SINGLE).is_file():
            self.weight_map = {name: SINGLE for name in self._open(SINGLE).keys()}
        else:
            raise UserError(f"{self.dir} has no {SINGLE} or {INDEX}")
        self._handles = {}

    def _open(self, file: str):
        path = self.dir / file
        if not path.is_file():
            raise UserError(f"{path} (named in {INDEX}) does not exist")
        try:
            return safe_open(str(path), framework="numpy")
        except (SafetensorError, OSError) as e:
            raise UserError(f"{path} is not a readable safetensors file ({e})") from None

    def names(self) -> list[str]:
        return list(self.weight_map)

    def get(self, name: str) -> np.ndarray:
        if name not in self.weight_map:
            raise UserError(f"{self.dir} has no tensor {name!r}")
        file = self.weight_map[name]
        if file not in self._handles:
            self._handles[file] = self._open(file)
        try:
            return self._handles[file].get_tensor(name)
        except SafetensorError as e:
            raise UserError(f"{self.dir / file}: cannot read {name} ({e})") from None
