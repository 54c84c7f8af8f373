"""The training loop: data, mesh, state (fresh or resumed), AOT-compiled step, metrics, checkpoints.

Resuming is automatic: if <workdir>/checkpoints holds a complete checkpoint, the
state, the data iterator position and the step continue from it, so N steps + restart
+ N steps equals 2N straight steps bit for bit on CPU. SIGTERM (preemption) saves a
checkpoint and returns cleanly.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from photon_jax.config import Config, window_order_seed
from photon_jax.data.loading import mixture, pipeline
from photon_jax.data.preparation.stop import Stopped
from photon_jax.errors import UserError
from photon_jax.eval.metrics import evaluate_batches, make_eval_step
from photon_jax.model.accounting import count_params, train_flops_per_token
from photon_jax.model.projection import compiling_for
from photon_jax.runs import checkpoint as ckpt
from photon_jax.runs.workdir import ensure_data, init_params_from, token_byte_lengths_for, tokenizer_for
from photon_jax.scaleout.remat_log import compile_audited
from photon_jax.scaleout.report import TARGET_NOTES, communication, describe_communication
from photon_jax.sharding import batch_sharding, bytes_per_device, check_batch, describe_mesh, logical_rules, make_mesh
from photon_jax.train.metrics import MetricWriter, peak_flops_per_device
from photon_jax.train.nonfinite import SkipStreak
from photon_jax.train.profiling import StepProfiler
from photon_jax.train.state import init_state, learning_rate_schedule, make_optimizer, state_layout
from photon_jax.train.step import make_train_step
from photon_jax.train.task_eval import TaskEvaluator


class _StopFlag:
    """Set by SIGTERM / SIGINT; the loop checkpoints and returns at the next step boundary."""

    def __init__(self):
        self.reason = None
        self._previous = {}

    def install(self):
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in (signal.SIGTERM,):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.reason = signal.Signals(signum).name

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def agreed(self, processes: int) -> bool:
        """Whether to stop now. With several processes all must stop at the same step (the checkpoint
        save and the next step are collective), so they share their flags at every step boundary."""
        if processes == 1:
            return self.reason is not None
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.int32(self.reason is not None))
        if np.any(flags) and self.reason is None:
            self.reason = "SIGTERM (on another process)"
        return bool(np.any(flags))


def _check_workdir(workdir: Path) -> None:
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / f".write_test.{jax.process_index()}"  # one per process on a shared filesystem
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"work directory {workdir} is not writable: {e.strerror or e}") from None


def _to_global(batch: dict, sharding) -> dict:
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def _compile(fn, *abstract_args, compiler_options=None):
    """Ahead-of-time compile; returns the executable and its memory analysis (or None)."""
    compiled = fn.lower(*abstract_args).compile(compiler_options=compiler_options)
    try:
        memory = compiled.memory_analysis()
    except Exception:  # not every backend reports it
        memory = None
    return compiled, memory


def _describe_memory(memory) -> str:
    if memory is None:
        return "memory analysis unavailable on this backend"
    fields = [("arguments", "argument_size_in_bytes"), ("outputs", "output_size_in_bytes"),
              ("temporaries", "temp_size_in_bytes"), ("code", "generated_code_size_in_bytes")]
    parts = [f"{name} {getattr(memory, attr, 0) / 2**20:.1f} MiB" for name, attr in fields]
    return "train step memory per device: " + ", ".join(parts)


def train_step_program(cfg: Config, tx, schedule, layout, in_sharding):
    """The jitted train step (explicit in/out shardings, donated state) and abstract arguments carrying
    the shardings, so that `.lower(*abstract).compile()` needs no allocated state or data."""
    step_fn = jax.jit(make_train_step(cfg, tx, schedule), in_shardings=(layout.shardings, in_sharding),
                      out_shardings=(layout.shardings, None), donate_argnums=0)
    abstract_state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                  layout.abstract, layout.shardings)
    abstract_batch = {k: jax.ShapeDtypeStruct((cfg.train.batch_size, cfg.data.seq_len), dt, sharding=in_sharding)
                      for k, dt in (("tokens", jnp.int32), ("mask", jnp.float32))}
    return step_fn, (abstract_state, abstract_batch)


def dry_run(cfg: Config, *, compiler_options=None, target: str | None = None) -> dict:
    """Lower and compile the train step for the current mesh without allocating state or reading data;
    report parameter, optimizer-state and activation (XLA temporaries) bytes per device, the collectives
    the compiled step runs against the analytic floor, and XLA's involuntary rematerializations.
    `target` ("gpu" / "tpu") compiles that platform's code path on the devices at hand (docs/scale-out.md)."""
    mesh = make_mesh(cfg.mesh)
    rules = logical_rules(cfg.mesh)
    check_batch(mesh, rules, cfg.train.batch_size, jax.process_count())
    tx, schedule = make_optimizer(cfg), learning_rate_schedule(cfg)
    in_sharding = batch_sharding(mesh, rules)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules), compiling_for(target):
        start = time.perf_counter()
        layout = state_layout(cfg, tx, mesh, rules)
        step_fn, abstract = train_step_program(cfg, tx, schedule, layout, in_sharding)
        lowered = step_fn.lower(*abstract)
        lower_s = time.perf_counter() - start
        start = time.perf_counter()
        compiled, remats = compile_audited(lowered, compiler_options)
        compile_s = time.perf_counter() - start
    try:
        memory = compiled.memory_analysis()
    except Exception:  # not every backend reports it
        memory = None
    mem = lambda attr: int(getattr(memory, attr, 0) or 0) if memory is not None else None  # noqa: E731
    state_bytes = lambda key: bytes_per_device(layout.abstract[key], layout.shardings[key])  # noqa: E731
    params = sum(x.size for x in jax.tree.leaves(layout.abstract["params"]))
    return {
        "name": cfg.name, "mesh": describe_mesh(mesh), "devices": mesh.size, "platform": jax.devices()[0].platform,
        "processes": jax.process_count(), "batch_size": cfg.train.batch_size, "seq_len": cfg.data.seq_len,
        "params": int(params),
        "per_device_bytes": {
            "params": state_bytes("params"), "optimizer": state_bytes("opt_state"),
            "activations": mem("temp_size_in_bytes"), "arguments": mem("argument_size_in_bytes"),
            "outputs": mem("output_size_in_bytes"), "aliased": mem("alias_size_in_bytes"),
            "code": mem("generated_code_size_in_bytes"),
        },
        "lower_seconds": round(lower_s, 2), "compile_seconds": round(compile_s, 2),
        "target": target or jax.devices()[0].platform, "target_note": TARGET_NOTES.get(target or ""),
        "communication": communication(cfg, compiled, layout, mesh, in_sharding),
        "rematerializations": [r.describe() for r in remats],
    }


def describe_dry_run(report: dict) -> str:
    def gib(n):
        if n is None:
            return "n/a"
        return f"{n / 2**30:.3f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
    b = report["per_device_bytes"]
    lines = [f"dry run: {report['name']} ({report['params']:,} params), mesh {report['mesh']} "
             f"({report['devices']} {report['platform']} devices, {report['processes']} process(es)), "
             f"batch {report['batch_size']} x {report['seq_len']}",
             f"  per device: parameters {gib(b['params'])}, optimizer state {gib(b['optimizer'])}, "
             f"activations (temporaries) {gib(b['activations'])}",
             f"  XLA: arguments {gib(b['arguments'])}, outputs {gib(b['outputs'])} "
             f"(aliased with arguments {gib(b['aliased'])}), code {gib(b['code'])}",
             f"  lowered in {report['lower_seconds']:.1f} s, compiled in {report['compile_seconds']:.1f} s"
             f" (code path: {report['target']})"]
    if report["target_note"]:
        lines.append(f"  note: {report['target_note']}")
    lines += describe_communication(report["communication"], len(report["rematerializations"]))
    return "\n".join(lines)


def _ensure_data_once(cfg: Config, workdir: Path, say):
    """Every process tokenizes its share of the work units (if the data is missing) and process 0 merges;
    after a barrier every process loads the data."""
    if jax.process_count() == 1:
        return ensure_data(cfg, workdir, say)
    from jax.experimental import multihost_utils

    ensure_data(cfg, workdir, say, jax.process_index(), jax.process_count())
    multihost_utils.sync_global_devices("photon_jax.train:data_ready")
    return ensure_data(cfg, workdir, say)


def _validation_sets(data_dir: Path, sources) -> list[tuple[str, Path]]:
    """(metrics split, data dir) per validation set: the run's data dir, or each data.mixture source."""
    if not sources:
        return [("validation", data_dir)]
    return [(f"validation/{s.name}", s.data_dir) for s in sources]


class _StoppedBeforeTraining(Exception):
    def __init__(self, reason: str, what: str):
        super().__init__(f"received {reason} {what}: no checkpoint written; rerun the same command to resume")
        self.reason = reason


def train(cfg: Config, workdir: str | Path, *, quiet: bool = False, stop_after: int | None = None) -> dict:
    """Train to cfg.train.steps (or stop_after more steps); returns a summary dict.

    SIGTERM is honoured from the start: while data is prepared (prepare stops its workers, keeping the
    finished units), restored or compiled (a handler cannot run inside an XLA compile: at its return),
    the run ends with one line and nothing saved; during training, with a checkpoint at the next step."""
    stop = _StopFlag().install()
    try:
        return _train(cfg, Path(workdir).resolve(), stop, quiet, stop_after)
    except (Stopped, _StoppedBeforeTraining) as e:
        if isinstance(e, KeyboardInterrupt):  # Ctrl-C during prepare: exit 130 like any other Ctrl-C
            raise
        reason = e.signal_name if isinstance(e, Stopped) else e.reason
        line = f"received {reason} while preparing data: {e.kept}; rerun the same command to resume" \
            if isinstance(e, Stopped) else str(e)
        print(line) if not quiet and jax.process_index() == 0 else None
        saved = ckpt.committed_steps(Path(workdir).resolve())  # untouched: where the next start resumes
        return {"step": saved[-1] if saved else 0, "stopped_by": reason, "train": None, "validation": None,
                "workdir": str(Path(workdir).resolve())}
    finally:
        stop.restore()


def _stop_before_training(stop: _StopFlag, processes: int, what: str) -> None:
    """Between the phases before the first step (every process calls it: agreeing is collective)."""
    if stop.agreed(processes):
        raise _StoppedBeforeTraining(stop.reason, what)


def _train(cfg: Config, workdir: Path, stop: _StopFlag, quiet: bool, stop_after: int | None) -> dict:
    _check_workdir(workdir)
    is_main = jax.process_index() == 0
    say = (lambda *a: None) if (quiet or not is_main) else print  # noqa: E731

    mesh = make_mesh(cfg.mesh)
    rules = logical_rules(cfg.mesh)
    check_batch(mesh, rules, cfg.train.batch_size, jax.process_count())
    manifest, data_dir = _ensure_data_once(cfg, workdir, say)
    _stop_before_training(stop, jax.process_count(), "while preparing data")
    task_eval = TaskEvaluator(cfg, tokenizer_for(data_dir, manifest), mesh, rules)  # task names checked now
    tx, schedule = make_optimizer(cfg), learning_rate_schedule(cfg)
    layout = state_layout(cfg, tx, mesh, rules)
    in_sharding = batch_sharding(mesh, rules)
    manager = ckpt.make_manager(workdir, cfg.train.keep_checkpoints)
    meta = {"tokenizer_sha256": manifest["tokenizer"]["sha256"], "vocab_size": manifest["vocab_size"]}

    t = cfg.train
    processes = jax.process_count()
    if t.batch_size % processes:
        raise UserError(f"train.batch_size={t.batch_size} is not divisible by {processes} processes")
    sources = mixture.load_sources(cfg.data.mixture) if cfg.data.mixture else None
    if sources:
        iterator = mixture.MixtureIterator(sources, cfg.data.seq_len, t.batch_size, window_order_seed(cfg.data),
                                           jax.process_index(), processes, cfg.data.worker_count)
        total = sum(s.weight for s in sources)
        say("data.mixture: " + ", ".join(f"{s.name} {float(s.weight / total):.1%}" for s in sources))
    else:
        iterator = pipeline.train_iterator(data_dir, cfg.data.seq_len, t.batch_size, window_order_seed(cfg.data),
                                           jax.process_index(), processes, cfg.data.worker_count)
    start = ckpt.latest_step(manager)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        if start is not None:
            saved_cfg, saved_meta = ckpt.restore_metadata(manager, start)
            mismatch = ckpt.model_mismatch(saved_cfg, cfg)
            if mismatch:
                raise UserError(f"checkpoint in {workdir} was trained with another model ({mismatch}); "
                                f"use a fresh --workdir")
            if saved_meta.get("tokenizer_sha256") != meta["tokenizer_sha256"]:
                raise UserError(f"checkpoint in {workdir} was trained with another tokenizer "
                                f"(sha256 {str(saved_meta.get('tokenizer_sha256'))[:12]} != "
                                f"{str(meta['tokenizer_sha256'])[:12]})")
            state, data_state = ckpt.restore_state(manager, start, layout.abstract, layout.shardings)
            iterator.set_state(data_state)
            say(f"resumed from step {start} in {workdir}")
        else:
            state = init_state(cfg, tx, layout)
            if t.init_from:
                params, source_step = init_params_from(t.init_from, cfg, layout.abstract["params"],
                                                       layout.shardings["params"], meta["tokenizer_sha256"])
                state = dict(state, params=params)
                say(f"initialised from {t.init_from} (step {source_step}); optimizer and step start fresh")
        _stop_before_training(stop, processes, "while loading the state")
        (workdir / "config.json").write_text(cfg.to_json()) if is_main else None

        step_fn, abstract = train_step_program(cfg, tx, schedule, layout, in_sharding)
        compiled, memory = _compile(step_fn, *abstract)
        _stop_before_training(stop, processes, "while compiling the train step")
        say(_describe_memory(memory))
        eval_fn = jax.jit(make_eval_step(cfg), in_shardings=(layout.shardings["params"], in_sharding))
        byte_lengths = token_byte_lengths_for(data_dir, manifest)

        n_params = count_params(cfg.model)
        flops_per_token = train_flops_per_token(cfg.model, cfg.data.seq_len)
        peak, peak_source = peak_flops_per_device()
        say(f"{cfg.name}: {n_params:,} params, {flops_per_token:.3e} train FLOPs/token, "
            f"mesh {dict(mesh.shape)}, peak {peak:.3e} FLOP/s/device ({peak_source})")

        writer = MetricWriter(workdir, enabled=is_main, wandb={
            "project": t.wandb_project, "mode": t.wandb_mode, "name": f"{cfg.name}-{workdir.name}",
            "config": cfg.to_dict()})
        profiler = StepProfiler(t.profile_steps, workdir / "tensorboard")
        streak = SkipStreak(t.max_consecutive_skips if t.nonfinite == "skip" else 0)
        step = int(jax.device_get(state["step"]))
        end = t.steps if stop_after is None else min(t.steps, step + stop_after)
        tokens_per_step = t.batch_size * cfg.data.seq_len
        history, last_eval, last_saved = [], None, step
        bar = tqdm(total=end, initial=step, disable=quiet or not is_main, desc="train", dynamic_ncols=True)
        window_start, window_tokens = time.perf_counter(), 0
        try:
            while step < end and not stop.agreed(processes):
                batch = _to_global(next(iterator), in_sharding)
                profiler.before(step + 1)
                with profiler.annotate(step + 1):
                    state, metrics = compiled(state, batch)
                step += 1
                profiler.after(step, metrics)
                window_tokens += tokens_per_step
                bar.update(1)
                # halt: checked every step (one scalar fetched), so the step is exact and the non-finite
                # update is never checkpointed; skip: the step already kept the old state (see step.py).
                if t.nonfinite == "halt" and not bool(jax.device_get(metrics["finite"])):
                    kept = f"the checkpoint of step {last_saved} is kept" if last_saved else "nothing was saved"
                    raise UserError(f"non-finite loss or gradient at step {step}; halting (train.nonfinite=halt); "
                                    f"{kept}")
                if streak.limit:
                    streak.push(step, metrics["finite"], last_saved)
                if step % t.log_every == 0 or step == end:
                    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    elapsed = time.perf_counter() - window_start
                    values["tokens_per_sec"] = window_tokens / elapsed
                    values["mfu"] = values["tokens_per_sec"] * flops_per_token / (peak * jax.device_count())
                    window_start, window_tokens = time.perf_counter(), 0
                    if sources:  # cumulative tokens per source, from the index map (equal on every process)
                        values.update(iterator.token_counts())
                    writer.write(step, "train", values)
                    history.append({"step": step, **values})
                    bar.set_postfix(loss=f"{values['token_loss']:.3f}", tok_s=f"{values['tokens_per_sec']:.0f}")
                if step % t.eval_every == 0 or step == end:
                    results = []
                    for split, eval_dir in _validation_sets(data_dir, sources):
                        batches = pipeline.eval_batches(eval_dir, "validation", cfg.data.seq_len, t.batch_size,
                                                        t.eval_batches, jax.process_index(), processes)
                        results.append(evaluate_batches(eval_fn, state["params"], batches, byte_lengths,
                                                        to_device=lambda b: _to_global(b, in_sharding)))
                        writer.write(step, split, results[-1]) if sources else None
                    last_eval = mixture.weighted_metrics(results, [s.weight for s in sources]) if sources \
                        else results[0]
                    writer.write(step, "validation", last_eval)
                    bar.write(f"step {step}: validation loss {last_eval['token_loss']:.4f} "
                              f"ppl {last_eval['perplexity']:.2f} bpb {last_eval.get('bits_per_byte', 0):.4f}") \
                        if is_main and not quiet else None
                if task_eval.due(step, end):
                    scores = task_eval.run(state["params"])
                    writer.write(step, "tasks", scores)
                    bar.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items())) \
                        if is_main and not quiet else None
                if step % t.checkpoint_every == 0 or step == end:
                    ckpt.save(manager, step, state, iterator.get_state(), cfg, meta)
                    last_saved = step
            streak.flush(last_saved)
            if step != last_saved:  # stopped by a signal between checkpoints
                ckpt.save(manager, step, state, iterator.get_state(), cfg, meta)
        finally:
            profiler.stop()
            bar.close()
            try:
                ckpt.finish(manager)  # waits for the last save; a failed write becomes one line (UserError)
            finally:
                writer.close()
    if stop.reason:
        say(f"received {stop.reason}: checkpoint saved at step {step}; rerun the same command to resume")
    summary = {"step": step, "stopped_by": stop.reason, "train": history[-1] if history else None,
               "validation": last_eval, "params": n_params, "workdir": str(workdir)}
    if is_main:
        (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
