"""What a sharded train step has to communicate, per device, from the model and the mesh alone.

The floor a compiled step is compared with (docs/scale-out.md):
  * FSDP: every parameter sharded over batch axes is all-gathered once per step, in the compute dtype
    (kept from the forward to the backward; a program that gathers again in the backward pays twice);
  * gradients are summed over every batch axis: reduce-scattered (fp32) over the batch axes that shard
    the parameter, all-reduced over the rest;
  * tensor parallelism (Megatron): per Transformer block, the attention output and the MLP output are
    all-reduced in the forward and the block's input gradient twice in the backward, for the rows of the
    device's batch shard; each token embedding lookup (vocabulary split) and the LM head's input gradient
    add one all-reduce of their rows.
The rows each stack runs follow the hierarchy: encoder i over the level-(i+1) units, decoder i over
one window of R + C - 1 rows per unit (C passes under alignment C's self-feeding), vanilla over tokens.
PHOTON's chunkers and converters, the loss's reductions and the reconstruction loss are left out: they
are small next to the stacks, and whatever they cost shows up as the gap to the compiled figure.
Wire bytes use the ring formulas of collectives.py.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import NamedSharding

from photon_jax.config import Config
from photon_jax.model.hierarchy import Hierarchy
from photon_jax.scaleout.collectives import wire_bytes


def _axes(entry) -> tuple[str, ...]:
    if entry is None:
        return ()
    return tuple(entry) if isinstance(entry, (tuple, list)) else (entry,)


def stack_rows(cfg: Config) -> list[tuple[str, int, int]]:
    """(stack, layers, rows per sequence) for every Transformer stack of one training forward."""
    m, t = cfg.model, cfg.data.seq_len
    if m.family == "vanilla":
        return [("stack", m.num_layers, t)]
    hier = Hierarchy.of(m)
    out = []
    for i, level in enumerate(m.levels):
        units = t // hier.tokens_per_unit(i + 1)
        passes = level.chunk if hier.self_fed(i) else 1
        out.append((f"encoder_{i}", level.encoder_layers, units))
        out.append((f"decoder_{i}", level.decoder_layers, units * hier.windows[i] * passes))
    return out


def _embedding_widths(cfg: Config) -> list[int]:
    m = cfg.model
    return [m.width] if m.family == "vanilla" else [m.embed_width, m.width]


def estimate(cfg: Config, abstract_params, param_shardings, mesh, batch_axes: tuple[str, ...]) -> dict:
    """{"all-gather", "reduce-scatter", "all-reduce": {"bytes", "wire_bytes"}, "total": ...} per device."""
    compute_bytes = np.dtype(cfg.model.dtype).itemsize
    out = {k: {"bytes": 0.0, "wire_bytes": 0.0} for k in ("all-gather", "reduce-scatter", "all-reduce")}

    def add(kind, size, n):
        out[kind]["bytes"] += size
        out[kind]["wire_bytes"] += wire_bytes(kind, size, n)

    leaves = jax.tree.leaves(abstract_params)
    shards = jax.tree.leaves(param_shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
    for leaf, sharding in zip(leaves, shards, strict=True):
        used = [a for entry in sharding.spec for a in _axes(entry)]
        fsdp = math.prod(mesh.shape[a] for a in used if a in batch_axes)
        other = math.prod(mesh.shape[a] for a in used if a not in batch_axes)
        local_elems = math.prod(leaf.shape) / other  # before any batch-axis gather
        if fsdp > 1:
            add("all-gather", local_elems * compute_bytes, fsdp)
            add("reduce-scatter", local_elems * 4 / fsdp, fsdp)
        rest = math.prod(mesh.shape[a] for a in batch_axes) // fsdp
        if rest > 1:
            add("all-reduce", local_elems * 4 / fsdp, rest)

    tensor = math.prod(mesh.shape[a] for a in mesh.axis_names if a not in batch_axes)
    if tensor > 1:
        batch_local = cfg.train.batch_size / math.prod(mesh.shape[a] for a in batch_axes)
        width = cfg.model.width
        for _, layers, rows in stack_rows(cfg):
            for _ in range(4 * layers):
                add("all-reduce", batch_local * rows * width * compute_bytes, tensor)
        for embed_width in _embedding_widths(cfg):
            add("all-reduce", batch_local * cfg.data.seq_len * embed_width * compute_bytes, tensor)
        add("all-reduce", batch_local * cfg.data.seq_len * width * compute_bytes, tensor)  # LM head input grad

    result = {k: {key: int(round(v)) for key, v in entry.items()} for k, entry in out.items()}
    result["total"] = {key: sum(result[k][key] for k in out) for key in ("bytes", "wire_bytes")}
    return result
