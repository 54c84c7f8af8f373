"""Device mesh and the logical-to-mesh rules table (the only place mesh axes are named).

Parameters, optimizer state, activations and caches carry logical axis names; the
rules in MeshConfig map them to the mesh axes (data, fsdp, tensor). State shardings
are derived from an abstract (jax.eval_shape) init, never written by hand.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from photon_jax.config import MeshConfig
from photon_jax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")


def mesh_shape(cfg: MeshConfig, num_devices: int) -> tuple[int, int, int]:
    sizes = [cfg.data, cfg.fsdp, cfg.tensor]
    fills = [i for i, s in enumerate(sizes) if s == -1]
    if len(fills) > 1:
        raise ConfigError("at most one mesh axis may be -1 (fill)")
    fixed = math.prod(s for s in sizes if s != -1)
    if fills:
        if num_devices % fixed:
            raise ConfigError(f"mesh {dict(zip(MESH_AXES, sizes))} does not fit {num_devices} devices")
        sizes[fills[0]] = num_devices // fixed
    if math.prod(sizes) != num_devices:
        raise ConfigError(f"mesh data={sizes[0]},fsdp={sizes[1]},tensor={sizes[2]} needs {math.prod(sizes)} "
                          f"devices, but {num_devices} are available")
    return tuple(sizes)


def make_mesh(cfg: MeshConfig, devices=None) -> Mesh:
    """A (data, fsdp, tensor) mesh with Auto axis types (Linen logical constraints need them)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(cfg, len(devices))
    try:
        device_grid = mesh_utils.create_device_mesh(shape, devices)
    except Exception:  # non-TPU/GPU topologies (fake CPU devices, odd counts): plain reshape
        device_grid = np.array(devices).reshape(shape)
    return Mesh(device_grid, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def logical_rules(cfg: MeshConfig) -> tuple[tuple[str, object], ...]:
    """Rules as Flax expects: (logical name, mesh axis | tuple of axes | None)."""
    out = []
    for entry in cfg.rules:
        if not isinstance(entry, (list, tuple)) or len(entry) != 2:
            raise ConfigError(f"mesh.rules entry {entry!r} must be [logical_name, mesh_axes]")
        name, axes = entry
        axes = tuple(axes) if isinstance(axes, list) else axes
        for axis in (axes if isinstance(axes, tuple) else (axes,)):
            if axis is not None and axis not in MESH_AXES:
                raise ConfigError(f"mesh.rules maps {name!r} to unknown mesh axis {axis!r} (known: {MESH_AXES})")
        out.append((name, axes))
    return tuple(out)


def logical_names(logical_specs) -> set[str]:
    """Every logical axis name used in a tree of logical PartitionSpecs."""
    names = set()
    for spec in jax.tree.leaves(logical_specs, is_leaf=lambda x: isinstance(x, PartitionSpec)):
        for entry in spec:
            for name in (entry if isinstance(entry, tuple) else (entry,)):
                if name is not None:
                    names.add(name)
    return names


def check_rules_cover(logical_specs, rules) -> None:
    """Fail with one line when a logical axis has no rule (Flax would silently replicate it)."""
    known = {name for name, _ in rules}
    missing = sorted(logical_names(logical_specs) - known)
    if missing:
        raise ConfigError(f"mesh.rules has no rule for logical axis {missing[0]!r} "
                          f"(add [{missing[0]}, null] to replicate it)")


def logical_to_shardings(logical_specs, mesh: Mesh, rules):
    """A tree of logical PartitionSpecs -> a tree of NamedShardings."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def check_divisible(abstract_tree, shardings) -> None:
    """Fail with one line when a sharded dimension does not divide evenly."""
    leaves, _ = jax.tree.flatten_with_path(abstract_tree)
    shard_leaves = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
    for (path, leaf), sharding in zip(leaves, shard_leaves):
        for dim, axes in zip(leaf.shape, sharding.spec):
            if axes is None:
                continue
            size = math.prod(sharding.mesh.shape[a] for a in (axes if isinstance(axes, tuple) else (axes,)))
            if dim % size:
                name = jax.tree_util.keystr(path)
                raise ConfigError(f"dimension {dim} of {name} is not divisible by mesh axes {axes} (size {size})")


@dataclasses.dataclass(frozen=True)
class StateLayout:
    """What jit needs to create, move or restore a tree: abstract shapes and shardings."""

    abstract: dict  # ShapeDtypeStructs (unboxed)
    shardings: dict  # NamedShardings, same structure
    logical_specs: dict  # logical PartitionSpecs (for golden files and reports)

    def sharded_abstract(self) -> dict:
        """The abstract tree with each leaf carrying its sharding: what `jit(...).lower` takes in place of
        allocated arrays, and what a checkpoint restores into."""
        return sharded_abstract(self.abstract, self.shardings)


def sharded_abstract(abstract_tree, shardings):
    """ShapeDtypeStructs of `abstract_tree` carrying the matching NamedShardings."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_tree, shardings)


def layout_of(boxed_abstract_tree, mesh: Mesh, rules) -> StateLayout:
    """The layout of an abstract tree whose leaves carry logical axis names (jax.eval_shape of an init)."""
    logical = nn.get_partition_spec(boxed_abstract_tree)
    abstract = strip_boxes(boxed_abstract_tree)
    check_rules_cover(logical, rules)
    with nn.logical_axis_rules(rules):
        shardings = logical_to_shardings(logical, mesh, rules)
    check_divisible(abstract, shardings)
    return StateLayout(abstract, shardings, logical)


def batch_sharding(mesh: Mesh, rules) -> NamedSharding:
    """Sharding of a (batch, length) input array."""
    spec = nn.logical_to_mesh_axes(("batch", "length"), rules)
    return NamedSharding(mesh, spec)


def check_batch(mesh: Mesh, rules, batch_size: int, process_count: int = 1) -> None:
    """The global batch must split evenly over the batch mesh axes, and those must split over processes
    (each process feeds its own rows; a batch replicated across processes would be inconsistent)."""
    spec = nn.logical_to_mesh_axes(("batch",), rules)[0]
    axes = () if spec is None else (spec if isinstance(spec, tuple) else (spec,))
    shards = math.prod(mesh.shape[a] for a in axes)
    if batch_size % shards:
        raise ConfigError(f"batch size {batch_size} is not divisible by the batch mesh axes {axes} (size {shards})")
    if shards % process_count:
        raise ConfigError(f"the batch mesh axes {axes} (size {shards}) must split over the {process_count} "
                          f"processes: make data*fsdp a multiple of {process_count}")


def bytes_per_device(abstract_tree, shardings) -> int:
    """Bytes one device holds of a sharded tree (the largest shard of each leaf)."""
    leaves = jax.tree.leaves(abstract_tree)
    shard_leaves = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
    total = 0
    for leaf, sharding in zip(leaves, shard_leaves, strict=True):
        total += math.prod(sharding.shard_shape(leaf.shape)) * np.dtype(leaf.dtype).itemsize
    return int(total)


def describe_mesh(mesh: Mesh) -> str:
    return ",".join(f"{k}={v}" for k, v in mesh.shape.items())


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def strip_boxes(tree):
    """Replace Flax Partitioned boxes by their values (nn.unbox would also add sharding constraints)."""
    is_box = lambda x: isinstance(x, nn.Partitioned)  # noqa: E731
    return jax.tree.map(lambda x: x.value if is_box(x) else x, tree, is_leaf=is_box)
