"""The training loop: a session (session.py: data, mesh, state fresh or resumed, the compiled step), a
generator of steps, and the hooks (hooks.py) that log, evaluate, profile, guard against non-finite
updates and checkpoint, each on its own period.

Resuming is automatic: if <workdir>/checkpoints holds a complete checkpoint, the state, the data
iterator position and the step continue from it, so N steps + restart + N steps equals 2N straight
steps bit for bit on CPU. SIGTERM (preemption) saves a checkpoint and returns cleanly.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import jax

from photon_jax.config import Config
from photon_jax.data.preparation.stop import Stopped
from photon_jax.model.accounting import count_params
from photon_jax.runs import checkpoint as ckpt
from photon_jax.train.hooks import Hooks, StandardHooks
from photon_jax.train.session import Session, StoppedBeforeTraining, open_session
from photon_jax.train.stop import StopFlag


def train(cfg: Config, workdir: str | Path, *, quiet: bool = False, stop_after: int | None = None,
          hooks: Sequence = ()) -> dict:
    """Train to cfg.train.steps (or stop_after more steps); returns a summary dict. `hooks`: more hooks
    (hooks.Hook instances, or (fn(step, metrics), every) pairs), run after validation and before the
    checkpoint of a step.

    SIGTERM is honoured from the start: while data is prepared (prepare stops its workers, keeping the
    finished units), restored or compiled (a handler cannot run inside an XLA compile: at its return),
    the run ends with one line and nothing saved; during training, with a checkpoint at the next step."""
    stop = StopFlag().install()
    try:
        return _train(cfg, Path(workdir).resolve(), stop, quiet, stop_after, hooks)
    except (Stopped, StoppedBeforeTraining) as e:
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


def run_steps(session: Session, start: int, end: int, stop: StopFlag, hooks: Hooks):
    """Yields (step, metrics) after each step until `end` or an agreed stop (checked between steps)."""
    step, processes = start, jax.process_count()
    while step < end and not stop.agreed(processes):
        batch = session.next_batch()
        hooks.before(step + 1)
        with jax.profiler.StepTraceAnnotation("train", step_num=step + 1):
            session.state, metrics = session.compiled(session.state, batch)
        step += 1
        yield step, metrics


def _train(cfg: Config, workdir: Path, stop: StopFlag, quiet: bool, stop_after: int | None, extra: Sequence) -> dict:
    is_main = jax.process_index() == 0
    say = print if is_main and not quiet else (lambda *a: None)
    with open_session(cfg, workdir, stop, say) as session:
        start = step = session.step
        end = cfg.train.steps if stop_after is None else min(cfg.train.steps, start + stop_after)
        hooks = StandardHooks(session, start, end, quiet, extra)
        try:
            for step, metrics in run_steps(session, start, end, stop, hooks):
                hooks.after(step, end, metrics)
            hooks.finish(step)
        finally:
            hooks.close()
    if stop.reason:
        say(f"received {stop.reason}: checkpoint saved at step {step}; rerun the same command to resume")
    history = hooks.metrics.history
    summary = {"step": step, "stopped_by": stop.reason, "train": history[-1] if history else None,
               "validation": hooks.validation.last, "params": count_params(cfg.model), "workdir": str(workdir)}
    if is_main:
        (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
