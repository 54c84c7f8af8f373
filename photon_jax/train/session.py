"""Everything a training run holds before its first step: the mesh, the data iterator, the state (fresh,
initialised from another run, or resumed from the last checkpoint), the compiled train step and eval
step, and the checkpoint manager. `open_session` builds it inside the mesh's context and keeps that
context for the steps; SIGTERM between the phases ends the run before anything is written.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import multihost_utils

from photon_jax.config import Config, window_order_seed
from photon_jax.data.loading import mixture, pipeline
from photon_jax.errors import UserError
from photon_jax.eval.metrics import make_eval_step
from photon_jax.runs import checkpoint as ckpt
from photon_jax.runs.workdir import ensure_data, init_params_from, token_byte_lengths_for, tokenizer_for
from photon_jax.sharding import batch_sharding, check_batch, logical_rules, make_mesh
from photon_jax.train.state import init_state, learning_rate_schedule, make_optimizer, state_layout
from photon_jax.train.step import compiled_memory_bytes, describe_memory_bytes, train_step_program
from photon_jax.train.stop import StopFlag
from photon_jax.train.task_eval import TaskEvaluator


class StoppedBeforeTraining(Exception):
    def __init__(self, reason: str, what: str):
        super().__init__(f"received {reason} {what}: no checkpoint written; rerun the same command to resume")
        self.reason = reason


@dataclasses.dataclass
class Session:
    cfg: Config
    workdir: Path
    mesh: object
    in_sharding: object
    data_dir: Path
    sources: list | None  # data.mixture sources, or None for one data dir
    iterator: object  # the train batches (grain / mixture), with get_state / set_state
    manager: object  # orbax CheckpointManager
    meta: dict  # saved with every checkpoint: the tokenizer's identity
    state: dict
    compiled: object  # the train step
    eval_fn: object
    byte_lengths: object
    task_eval: TaskEvaluator
    say: object

    @property
    def step(self) -> int:
        return int(jax.device_get(self.state["step"]))

    def next_batch(self) -> dict:
        return to_global(next(self.iterator), self.in_sharding)

    def save(self, step: int) -> None:
        ckpt.save(self.manager, step, self.state, self.iterator.get_state(), self.cfg, self.meta)


def to_global(batch: dict, sharding) -> dict:
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def check_workdir(workdir: Path) -> None:
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / f".write_test.{jax.process_index()}"  # one per process on a shared filesystem
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"work directory {workdir} is not writable: {e.strerror or e}") from None


def compile_step(step_fn, abstract):
    """Ahead-of-time compile of the train step (tests/reliability_worker.py wraps this to hold a signal
    over the compile, as XLA does)."""
    compiled = step_fn.lower(*abstract).compile()
    return compiled, compiled_memory_bytes(compiled)


def _ensure_data_once(cfg: Config, workdir: Path, say):
    """Every process tokenizes its share of the work units (if the data is missing) and process 0 merges;
    after a barrier every process loads the data."""
    if jax.process_count() == 1:
        return ensure_data(cfg, workdir, say)
    ensure_data(cfg, workdir, say, jax.process_index(), jax.process_count())
    multihost_utils.sync_global_devices("photon_jax.train:data_ready")
    return ensure_data(cfg, workdir, say)


def _check_between_phases(stop: StopFlag, what: str) -> None:
    """Every process calls it before the first step (agreeing is collective)."""
    if stop.agreed(jax.process_count()):
        raise StoppedBeforeTraining(stop.reason, what)


def _train_iterator(cfg: Config, data_dir: Path, sources, say):
    t, processes = cfg.train, jax.process_count()
    if t.batch_size % processes:
        raise UserError(f"train.batch_size={t.batch_size} is not divisible by {processes} processes")
    seed = window_order_seed(cfg.data)
    if not sources:
        return pipeline.train_iterator(data_dir, cfg.data.seq_len, t.batch_size, seed, jax.process_index(),
                                       processes, cfg.data.worker_count)
    total = sum(s.weight for s in sources)
    say("data.mixture: " + ", ".join(f"{s.name} {float(s.weight / total):.1%}" for s in sources))
    return mixture.MixtureIterator(sources, cfg.data.seq_len, t.batch_size, seed, jax.process_index(), processes,
                                   cfg.data.worker_count)


def _restore_or_init(cfg: Config, workdir: Path, manager, meta: dict, layout, tx, iterator, say) -> dict:
    start = ckpt.latest_step(manager)
    if start is None:
        state = init_state(cfg, tx, layout)
        if cfg.train.init_from:
            params, source_step = init_params_from(cfg.train.init_from, cfg, layout.abstract["params"],
                                                   layout.shardings["params"], meta["tokenizer_sha256"])
            state = dict(state, params=params)
            say(f"initialised from {cfg.train.init_from} (step {source_step}); optimizer and step start fresh")
        return state
    saved_cfg, saved_meta = ckpt.restore_metadata(manager, start)
    mismatch = ckpt.model_mismatch(saved_cfg, cfg)
    if mismatch:
        raise UserError(f"checkpoint in {workdir} was trained with another model ({mismatch}); use a fresh --workdir")
    if saved_meta.get("tokenizer_sha256") != meta["tokenizer_sha256"]:
        raise UserError(f"checkpoint in {workdir} was trained with another tokenizer "
                        f"(sha256 {str(saved_meta.get('tokenizer_sha256'))[:12]} != "
                        f"{str(meta['tokenizer_sha256'])[:12]})")
    state, data_state = ckpt.restore_state(manager, start, layout.abstract, layout.shardings)
    iterator.set_state(data_state)
    say(f"resumed from step {start} in {workdir}")
    return state


@contextlib.contextmanager
def open_session(cfg: Config, workdir: Path, stop: StopFlag, say):
    """The run's Session, inside its mesh and logical-axis context for as long as the block runs."""
    check_workdir(workdir)
    mesh, rules = make_mesh(cfg.mesh), logical_rules(cfg.mesh)
    check_batch(mesh, rules, cfg.train.batch_size, jax.process_count())
    manifest, data_dir = _ensure_data_once(cfg, workdir, say)
    _check_between_phases(stop, "while preparing data")
    task_eval = TaskEvaluator(cfg, tokenizer_for(data_dir, manifest), mesh, rules)  # task names checked now
    tx, schedule = make_optimizer(cfg), learning_rate_schedule(cfg)
    layout = state_layout(cfg, tx, mesh, rules)
    in_sharding = batch_sharding(mesh, rules)
    manager = ckpt.make_manager(workdir, cfg.train.keep_checkpoints)
    meta = {"tokenizer_sha256": manifest["tokenizer"]["sha256"], "vocab_size": manifest["vocab_size"]}
    sources = mixture.load_sources(cfg.data.mixture) if cfg.data.mixture else None
    iterator = _train_iterator(cfg, data_dir, sources, say)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        state = _restore_or_init(cfg, workdir, manager, meta, layout, tx, iterator, say)
        _check_between_phases(stop, "while loading the state")
        if jax.process_index() == 0:
            (workdir / "config.json").write_text(cfg.to_json())
        compiled, memory = compile_step(*train_step_program(cfg, tx, schedule, layout, in_sharding))
        _check_between_phases(stop, "while compiling the train step")
        say(describe_memory_bytes(memory))
        eval_fn = jax.jit(make_eval_step(cfg), in_shardings=(layout.shardings["params"], in_sharding))
        yield Session(cfg, workdir, mesh, in_sharding, data_dir, sources, iterator, manager, meta, state, compiled,
                      eval_fn, token_byte_lengths_for(data_dir, manifest), task_eval, say)
