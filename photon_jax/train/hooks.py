"""What runs around the train steps, each with its own period: a hook's `after` runs after every step
whose number is a multiple of its `every` and after the run's last step. The loop (loop.py) only
steps and calls them; `Hooks.add(fn, every=N)` registers a plain function too.

Order matters and is the registration order: the non-finite guard first (a halted step is never
logged or saved), then the progress bar, logging, validation, tasks, and the checkpoint last (it saves
the state the others looked at).
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
from tqdm import tqdm

from photon_jax.data.loading import mixture, pipeline
from photon_jax.errors import UserError
from photon_jax.eval.metrics import evaluate_batches
from photon_jax.model.accounting import count_params, train_flops_per_token
from photon_jax.runs import checkpoint as ckpt
from photon_jax.train.metrics import MetricWriter, peak_flops_per_device
from photon_jax.train.nonfinite import SkipStreak
from photon_jax.train.profiling import StepProfiler
from photon_jax.train.session import Session, to_global


class Hook:
    every = 1  # 0: after the last step only

    def before(self, step: int) -> None:
        """Before step `step` (1-based) runs."""

    def after(self, step: int, end: int, metrics: dict) -> None:
        """After step `step`, when due; `metrics` are the step's outputs (device arrays)."""

    def finish(self, step: int) -> None:
        """The steps ended at `step` (the last one, or a signal's)."""

    def close(self) -> None:
        """Always, error or not."""


class _FunctionHook(Hook):
    def __init__(self, fn, every: int):
        self.fn, self.every = fn, every

    def after(self, step, end, metrics):
        self.fn(step, metrics)


class Hooks:
    def __init__(self):
        self.hooks: list[Hook] = []

    def add(self, hook, every: int | None = None):
        """A Hook, or a function `fn(step, metrics)` run every `every` steps and after the last."""
        if not isinstance(hook, Hook):
            hook = _FunctionHook(hook, 1 if every is None else every)
        elif every is not None:
            hook.every = every
        self.hooks.append(hook)
        return hook

    def before(self, step: int) -> None:
        for hook in self.hooks:
            hook.before(step)

    def after(self, step: int, end: int, metrics: dict) -> None:
        for hook in self.hooks:
            if step == end or (hook.every > 0 and step % hook.every == 0):
                hook.after(step, end, metrics)

    def finish(self, step: int) -> None:
        for hook in self.hooks:
            hook.finish(step)

    def close(self) -> None:
        """Closes every hook; the first error (a failed checkpoint write) is raised after all have closed."""
        error = None
        for hook in self.hooks:
            try:
                hook.close()
            except BaseException as e:  # noqa: BLE001 - re-raised below, once the rest are closed
                error = error or e
        if error is not None:
            raise error


class Checkpoints(Hook):
    """Saves every train.checkpoint_every steps, at the last step, and where a signal stopped the run;
    `close` waits for the last (asynchronous) save, a failed write becoming one line."""

    def __init__(self, session: Session, every: int):
        self.session, self.every, self.last_saved = session, every, session.step

    def after(self, step, end, metrics):
        self.session.save(step)
        self.last_saved = step

    def finish(self, step):
        if step != self.last_saved:  # stopped by a signal between checkpoints
            self.after(step, step, None)

    def close(self):
        ckpt.finish(self.session.manager)

    def kept(self) -> str:
        return f"the checkpoint of step {self.last_saved} is kept" if self.last_saved else "nothing was saved"


class NonFiniteGuard(Hook):
    """train.nonfinite=halt: every step's flag is read (one scalar), so the halt is at the exact step and the
    non-finite update is never saved. skip: the step kept the old state; a streak of skips halts."""

    def __init__(self, mode: str, max_skips: int, checkpoints: Checkpoints):
        self.halt, self.checkpoints = mode == "halt", checkpoints
        self.streak = SkipStreak(max_skips if mode == "skip" else 0)

    def after(self, step, end, metrics):
        if self.halt and not bool(jax.device_get(metrics["finite"])):
            raise UserError(f"non-finite loss or gradient at step {step}; halting (train.nonfinite=halt); "
                            f"{self.checkpoints.kept()}")
        if self.streak.limit:
            self.streak.push(step, metrics["finite"], self.checkpoints.last_saved)

    def finish(self, step):
        self.streak.flush(self.checkpoints.last_saved)


class Profile(Hook):
    """jax.profiler traces of train.profile_steps (profiling.py)."""

    def __init__(self, spec: str, log_dir: Path):
        self.profiler = StepProfiler(spec, log_dir)

    def before(self, step):
        self.profiler.before(step)

    def after(self, step, end, metrics):
        self.profiler.after(step, metrics)

    def close(self):
        self.profiler.stop()


class Progress(Hook):
    def __init__(self, start: int, end: int, enabled: bool):
        self.bar = tqdm(total=end, initial=start, disable=not enabled, desc="train", dynamic_ncols=True)
        self.enabled = enabled

    def after(self, step, end, metrics):
        self.bar.update(step - self.bar.n)

    def write(self, line: str) -> None:
        self.bar.write(line) if self.enabled else None

    def close(self):
        self.bar.close()


class TrainMetrics(Hook):
    """Every train.log_every steps: the step's metrics, tokens/s and MFU over the steps since the last log,
    and per-source token counts of a mixture, to metrics.jsonl / TensorBoard / W&B."""

    def __init__(self, session: Session, writer: MetricWriter, progress: Progress, start: int, every: int):
        cfg = session.cfg
        self.session, self.writer, self.progress, self.every = session, writer, progress, every
        self.tokens_per_step = cfg.train.batch_size * cfg.data.seq_len
        self.flops_per_token = train_flops_per_token(cfg.model, cfg.data.seq_len)
        self.peak, peak_source = peak_flops_per_device()
        self.history: list[dict] = []
        self.window_start, self.window_step = time.perf_counter(), start
        session.say(f"{cfg.name}: {count_params(cfg.model):,} params, {self.flops_per_token:.3e} train FLOPs/token, "
                    f"mesh {dict(session.mesh.shape)}, peak {self.peak:.3e} FLOP/s/device ({peak_source})")

    def after(self, step, end, metrics):
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        elapsed = time.perf_counter() - self.window_start
        values["tokens_per_sec"] = (step - self.window_step) * self.tokens_per_step / elapsed
        values["mfu"] = values["tokens_per_sec"] * self.flops_per_token / (self.peak * jax.device_count())
        self.window_start, self.window_step = time.perf_counter(), step
        if self.session.sources:  # cumulative tokens per source, from the index map (equal on every process)
            values.update(self.session.iterator.token_counts())
        self.writer.write(step, "train", values)
        self.history.append({"step": step, **values})
        self.progress.bar.set_postfix(loss=f"{values['token_loss']:.3f}", tok_s=f"{values['tokens_per_sec']:.0f}")


class Validation(Hook):
    """Every train.eval_every steps: held-out loss, perplexity and bits per byte (per source of a mixture,
    and their weighted mean)."""

    def __init__(self, session: Session, writer: MetricWriter, progress: Progress, every: int):
        self.session, self.writer, self.progress, self.every = session, writer, progress, every
        self.last = None

    def _sets(self) -> list[tuple[str, Path]]:
        sources = self.session.sources
        if not sources:
            return [("validation", self.session.data_dir)]
        return [(f"validation/{s.name}", s.data_dir) for s in sources]

    def after(self, step, end, metrics):
        s, t = self.session, self.session.cfg.train
        results = []
        for split, eval_dir in self._sets():
            batches = pipeline.eval_batches(eval_dir, "validation", s.cfg.data.seq_len, t.batch_size, t.eval_batches,
                                            jax.process_index(), jax.process_count())
            results.append(evaluate_batches(s.eval_fn, s.state["params"], batches, s.byte_lengths,
                                            to_device=lambda b: to_global(b, s.in_sharding)))
            self.writer.write(step, split, results[-1]) if s.sources else None
        self.last = mixture.weighted_metrics(results, [x.weight for x in s.sources]) if s.sources else results[0]
        self.writer.write(step, "validation", self.last)
        self.progress.write(f"step {step}: validation loss {self.last['token_loss']:.4f} "
                            f"ppl {self.last['perplexity']:.2f} bpb {self.last.get('bits_per_byte', 0):.4f}")


class TaskScores(Hook):
    """Every train.eval_tasks_every steps: lm-evaluation-harness tasks (task_eval.py)."""

    def __init__(self, session: Session, writer: MetricWriter, progress: Progress):
        self.session, self.writer, self.progress = session, writer, progress
        self.every = session.task_eval.every

    def after(self, step, end, metrics):
        scores = self.session.task_eval.run(self.session.state["params"])
        self.writer.write(step, "tasks", scores)
        self.progress.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))


class Writer(Hook):
    """Closes the metric writer (TensorBoard, W&B) last, after the checkpoint's wait."""

    def __init__(self, writer: MetricWriter):
        self.writer, self.every = writer, 0

    def close(self):
        self.writer.close()


class StandardHooks(Hooks):
    """The hooks every training run has, from its config; `validation` and `metrics` hold what the run's
    summary reports."""

    def __init__(self, session: Session, start: int, end: int, quiet: bool, extra=()):
        super().__init__()
        cfg, t, workdir = session.cfg, session.cfg.train, session.workdir
        is_main = jax.process_index() == 0
        writer = MetricWriter(workdir, enabled=is_main, wandb={
            "project": t.wandb_project, "mode": t.wandb_mode, "name": f"{cfg.name}-{workdir.name}",
            "config": cfg.to_dict()})
        progress = Progress(start, end, enabled=is_main and not quiet)
        checkpoints = Checkpoints(session, t.checkpoint_every)
        self.add(NonFiniteGuard(t.nonfinite, t.max_consecutive_skips, checkpoints))
        self.add(Profile(t.profile_steps, workdir / "tensorboard"))
        self.add(progress)
        self.metrics = self.add(TrainMetrics(session, writer, progress, start, t.log_every))
        self.validation = self.add(Validation(session, writer, progress, t.eval_every))
        if session.task_eval.tasks:
            self.add(TaskScores(session, writer, progress))
        for hook in extra:  # the caller's: Hook instances or (fn(step, metrics), every) pairs
            self.add(hook) if isinstance(hook, Hook) else self.add(*hook)
        self.add(checkpoints)
        self.add(Writer(writer))
