"""Orbax checkpoints: train state + data iterator state + resolved config + metadata, asynchronous.

Layout: <workdir>/checkpoints/<step>/{state,data_iter,config,meta}. Restoring always
goes into ShapeDtypeStructs that carry the *current* shardings, so a checkpoint
written on one mesh loads on any other.

Faults: orbax writes a step into `<step>.orbax-checkpoint-tmp*` and renames it to `<step>`
only after every item and its commit marker (commit_success.txt, and the commit timestamp
in _CHECKPOINT_METADATA) are written, so a save killed half way leaves a temporary
directory: it is listed with a warning and never loaded. A `<step>` directory without a
commit marker, unreadable files, or a state with NaN/Inf values is refused with one line
(UserError), never replaced by a fresh initialisation; a failed write (disk full, read-only
or unwritable directory) becomes one line that names the last complete checkpoint, which is
kept (orbax deletes old steps only after the new one is committed).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import traceback
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from photon_jax.config import RUNTIME_MODEL_FIELDS, Config, config_from_json
from photon_jax.errors import UserError
from photon_jax.sharding import sharded_abstract

log = logging.getLogger(__name__)


def checkpoint_dir(workdir: str | Path) -> Path:
    return Path(workdir).resolve() / "checkpoints"


TMP_MARKER = ".orbax-checkpoint-tmp"  # orbax's suffix for a step directory still being written
COMMIT_FILE = "commit_success.txt"  # orbax writes it into the step directory just before the final rename
_STORAGE_HINTS = ("No space left", "Disk quota", "Read-only file system", "Permission denied")


def make_manager(workdir: str | Path, keep: int = 3, async_save: bool = True) -> ocp.CheckpointManager:
    directory = checkpoint_dir(workdir)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    _quiet_orbax_storage_tracebacks()
    _drop_closed_loop_noise()
    try:
        manager = ocp.CheckpointManager(directory, options=options)
    except OSError as e:
        raise UserError(f"cannot use checkpoint directory {directory}: {e.strerror or e}") from None
    if jax.process_index() == 0:
        for path in unfinished_saves(workdir):
            print(f"photon-jax: warning: ignoring unfinished checkpoint {path} (a save that was interrupted or "
                  f"is still running); it is never loaded", file=sys.stderr)
    return manager


def unfinished_saves(workdir: str | Path) -> list[Path]:
    """Temporary step directories orbax left behind (killed or failed saves), oldest step first."""
    directory = checkpoint_dir(workdir)
    if not directory.is_dir():
        return []
    step = lambda p: (len(p.name.split(".")[0]), p.name)  # noqa: E731  (numeric order of the step prefix)
    return sorted((p for p in directory.iterdir() if TMP_MARKER in p.name), key=step)


def is_committed(step_dir: Path) -> bool:
    """Whether orbax finished this step directory: its commit file, or a commit time in its metadata."""
    if (step_dir / COMMIT_FILE).is_file():
        return True
    try:
        return bool(json.loads((step_dir / "_CHECKPOINT_METADATA").read_text()).get("commit_timestamp_nsecs"))
    except (OSError, ValueError, AttributeError):
        return False


def committed_steps(workdir: str | Path) -> list[int]:
    directory = checkpoint_dir(workdir)
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and is_committed(p))


def _storage_failure(error: BaseException) -> str | None:
    """The reason, when an exception (or one it wraps) is a failed write to storage."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError):
            return error.strerror or str(error)
        text = str(error)
        for hint in _STORAGE_HINTS:
            if hint in text:
                return hint
        error = error.__cause__ or error.__context__
    return None


class _DropStorageTracebacks(logging.Filter):
    """Orbax logs a failed background write with several full tracebacks (one per writer thread, and
    more from the threads it leaves behind when the process then exits). The training loop reports the
    failure as one line (UserError), so drop those records: storage errors, and after a reported
    failed write, any orbax traceback."""

    reported = False  # set once a failed write became a UserError

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and "orbax" in (record.pathname or "") and record.exc_info[1] is not None:
            return not (_DropStorageTracebacks.reported or _storage_failure(record.exc_info[1]))
        return True


def _quiet_orbax_storage_tracebacks() -> None:
    for name in ("absl", "orbax"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropStorageTracebacks) for f in logger.filters):
            logger.addFilter(_DropStorageTracebacks())


def _workdir_of(manager) -> Path:
    return Path(str(manager.directory)).parent


def _write_failed(manager, reason: str) -> UserError:
    """The one-line error for a failed write; from here on the aborted save's leftovers stay quiet (orbax's
    tracebacks, and the coroutines its cancelled writer threads never ran)."""
    _DropStorageTracebacks.reported = True
    warnings.filterwarnings("ignore", message=r"coroutine .* was never awaited", category=RuntimeWarning)
    steps = committed_steps(_workdir_of(manager))
    kept = f"the last complete checkpoint (step {steps[-1]}) is kept" if steps else "no complete checkpoint exists"
    return UserError(f"could not write a checkpoint to {checkpoint_dir(_workdir_of(manager))}: {reason}; {kept}")


@jax.jit
def _all_finite(tree) -> jax.Array:
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else jnp.array(True)


def save(manager: ocp.CheckpointManager, step: int, state, data_state: dict, cfg: Config, meta: dict) -> None:
    """Start an asynchronous save of `step`. Refuses a state with NaN/Inf values (it would poison every
    resume); a failed write, here or in the previous save's background thread, becomes a UserError."""
    if not bool(jax.device_get(_all_finite(state))):
        steps = committed_steps(_workdir_of(manager))
        kept = f"the last checkpoint (step {steps[-1]}) is kept" if steps else "no checkpoint was saved"
        raise UserError(f"the train state at step {step} has NaN/Inf values; it was not saved and {kept} "
                        f"(lower train.learning_rate, or check the data)")
    try:
        saved = manager.save(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeSave(state),
            data_iter=ocp.args.JsonSave(data_state),
            config=ocp.args.JsonSave(cfg.to_dict()),
            meta=ocp.args.JsonSave(meta),
        ))
    except Exception as e:  # noqa: BLE001 - only storage failures are converted
        _release_orbax_waiters()
        reason = _storage_failure(e)
        if reason is None:
            raise
        raise _write_failed(manager, reason) from None
    if not saved:  # orbax skips (silently) any step <= its latest one
        raise UserError(f"checkpoint of step {step} was not written: {checkpoint_dir(_workdir_of(manager))} "
                        f"already holds step {manager.latest_step()}; use a fresh --workdir")


def _release_orbax_waiters() -> None:
    """When manager.save fails part way (e.g. creating the step directory on a read-only disk), the commit
    threads orbax already started keep waiting for a 'directory created' signal that never comes, for
    up to its coordination timeout (300 s), and Python waits for them before the process can exit.
    Cancel them and give them that signal (single process only: the signals are process-local there)."""
    if jax.process_count() != 1:
        return
    try:
        from orbax.checkpoint._src.futures import future as orbax_future

        for thread in threading.enumerate():
            if isinstance(thread, orbax_future._SignalingThread) and thread.is_alive():
                thread._cancelled = True
                orbax_future.set_signals(thread._receive_signals, operation_id=thread._operation_id)
    except Exception:  # noqa: BLE001 - orbax internals moved: the process just exits later
        log.debug("could not release orbax's waiting commit threads", exc_info=True)


def finish(manager: ocp.CheckpointManager) -> None:
    """Wait for pending saves and close; a failed background write becomes a UserError."""
    try:
        manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001
        reason = _storage_failure(e)
        try:
            manager.close()
        except Exception:  # noqa: BLE001 - it re-raises the same failed write
            pass
        if reason is None:
            raise
        raise _write_failed(manager, reason) from None
    manager.close()


def _is_closed_loop_callback(error: BaseException | None, tb) -> bool:
    """A tensorstore read or write finishing after orbax closed the event loop that awaited it: its
    completion callback (asyncio's call_soon_threadsafe) finds the loop closed. Only that: the error's
    innermost frame is asyncio's closed-loop check, reached from call_soon_threadsafe."""
    if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
        return False
    frames = [(f.f_code.co_name, f.f_code.co_filename) for f, _ in traceback.walk_tb(tb)]
    names = [name for name, _ in frames]
    return bool(frames) and frames[-1][0] == "_check_closed" and "asyncio" in frames[-1][1] \
        and "call_soon_threadsafe" in names


def _drop_closed_loop_noise() -> None:
    """When a save fails (disk full) or a restore fails (a corrupt array), orbax closes the event loop of
    that operation while tensorstore I/O it started is still in flight. Each late completion then raises
    'RuntimeError: Event loop is closed' in a tensorstore thread, which prints it through sys.excepthook
    (or sys.unraisablehook), at any time up to the process exit, depending on load. The failure itself is
    reported as one line (UserError): drop exactly those late callbacks, nothing else. Installed once,
    for the life of the process, when a checkpoint manager is made."""
    if getattr(sys.excepthook, "photon_jax_filter", False):
        return
    previous_excepthook, previous_unraisablehook = sys.excepthook, sys.unraisablehook

    def excepthook(kind, error, tb):
        if not _is_closed_loop_callback(error, tb):
            previous_excepthook(kind, error, tb)

    def unraisablehook(unraisable):
        if not _is_closed_loop_callback(unraisable.exc_value, unraisable.exc_traceback):
            previous_unraisablehook(unraisable)

    excepthook.photon_jax_filter = unraisablehook.photon_jax_filter = True
    sys.excepthook, sys.unraisablehook = excepthook, unraisablehook


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
    """The resolved config and metadata saved with a checkpoint (refused if the step was never committed)."""
    step_dir = Path(str(manager.directory)) / str(step)
    if step_dir.is_dir() and not is_committed(step_dir):
        raise UserError(f"checkpoint {step_dir} was not completely written (no {COMMIT_FILE} or commit time); "
                        f"move it out of {step_dir.parent} to use the previous checkpoint")
    restored = _restore_item(manager, step, config=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore())
    return config_from_json(json.dumps(restored["config"])), dict(restored["meta"])


def restore_state(manager, step: int, abstract_state, shardings):
    """Train state into the current shardings, plus the data iterator state."""
    target = sharded_abstract(abstract_state, shardings)
    restored = _restore_item(manager, step, state=_pytree_restore(target), data_iter=ocp.args.JsonRestore())
    return restored["state"], dict(restored["data_iter"])


def restore_params(manager, step: int, abstract_params, shardings):
    """Params only (no optimizer state), into the current shardings: partial restore of `state`."""
    target = {"params": sharded_abstract(abstract_params, shardings)}
    restored = _restore_item(manager, step, state=_pytree_restore(target, partial=True))
    return restored["state"]["params"]


def latest_step(manager) -> int | None:
    return manager.latest_step()


def model_mismatch(saved: Config, current: Config) -> str | None:
    """First differing model field between a checkpoint's config and the current one, or None."""
    a, b = saved.model.__dict__, current.model.__dict__
    for key in a:
        if a[key] != b[key] and key not in RUNTIME_MODEL_FIELDS:
            return f"model.{key}: checkpoint has {a[key]!r}, config has {b[key]!r}"
    return None
