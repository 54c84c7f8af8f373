"""Orbax checkpoints: train state + data iterator state + resolved config + metadata, asynchronous.

Layout: <workdir>/checkpoints/<step>/{state,data_iter,config,meta}. Restoring always
goes into ShapeDtypeStructs that carry the *current* shardings, so a checkpoint
written on one mesh loads on any other. Only complete checkpoints are listed by
orbax (incomplete temporary directories are ignored).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from photon_jax.config import Config, config_from_json
from photon_jax.errors import UserError

log = logging.getLogger(__name__)


def checkpoint_dir(workdir: str | Path) -> Path:
    return Path(workdir).resolve() / "checkpoints"


def make_manager(workdir: str | Path, keep: int = 3, async_save: bool = True) -> ocp.CheckpointManager:
    directory = checkpoint_dir(workdir)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    try:
        return ocp.CheckpointManager(directory, options=options)
    except OSError as e:
        raise UserError(f"cannot use checkpoint directory {directory}: {e.strerror or e}") from None


def save(manager: ocp.CheckpointManager, step: int, state, data_state: dict, cfg: Config, meta: dict) -> None:
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeSave(state),
        data_iter=ocp.args.JsonSave(data_state),
        config=ocp.args.JsonSave(cfg.to_dict()),
        meta=ocp.args.JsonSave(meta),
    ))


def _restore_item(manager, step: int, **items):
    try:
        return manager.restore(step, args=ocp.args.Composite(**items))
    except (ValueError, KeyError, FileNotFoundError, OSError, TypeError) as e:
        where = checkpoint_dir(manager.directory.parent) / str(step)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"checkpoint {where} is unreadable or incompatible: {first[:300]}") from None


def _pytree_restore(target, partial: bool = False):
    return ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                  partial_restore=partial)


def restore_metadata(manager, step: int) -> tuple[Config, dict]:
    """The resolved config and metadata saved with a checkpoint."""
    restored = _restore_item(manager, step, config=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore())
    return config_from_json(json.dumps(restored["config"])), dict(restored["meta"])


def restore_state(manager, step: int, abstract_state, shardings):
    """Train state into the current shardings, plus the data iterator state."""
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings)
    restored = _restore_item(manager, step, state=_pytree_restore(target), data_iter=ocp.args.JsonRestore())
    return restored["state"], dict(restored["data_iter"])


def restore_params(manager, step: int, abstract_params, shardings):
    """Params only (no optimizer state), into the current shardings: partial restore of `state`."""
    target = {"params": jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                     abstract_params, shardings)}
    restored = _restore_item(manager, step, state=_pytree_restore(target, partial=True))
    return restored["state"]["params"]


def latest_step(manager) -> int | None:
    return manager.latest_step()


def model_mismatch(saved: Config, current: Config) -> str | None:
    """First differing model field between a checkpoint's config and the current one, or None."""
    a, b = saved.model.__dict__, current.model.__dict__
    for key in a:
        if a[key] != b[key] and key not in ("dtype", "remat", "attention_impl"):
            return f"model.{key}: checkpoint has {a[key]!r}, config has {b[key]!r}"
    return None
