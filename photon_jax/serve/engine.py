"""The serving engine: one thread owns the slot pool and runs what the scheduler plans.

Each round: apply cancels and timeouts, ask scheduler.Scheduler for a Plan (rows to release, batches of
requests to insert, a decode of the first `width` rows for `steps` steps), run those pool programs
(pool.py), and hand the decode's output back to the scheduler, which emits each request's events
(scheduler.Tokens / scheduler.Done) to its sink in one call per request per round.

The slot schedule over the hierarchy (alignment of phases, docs/serving.md) and every other policy are
the scheduler's; this file only moves data between it and the device.

An engine failure (an exception from a program) ends every request in flight and waiting with "error",
sets `error` (the HTTP side answers 503 from then on) and calls `on_failure` (launch.py: exit non-zero so
that a supervisor restarts the server). A request whose own inputs a program rejects fails alone.
"""

from __future__ import annotations

import threading
import time

import jax
import numpy as np

from photon_jax.serve import pool as pool_lib
from photon_jax.serve.scheduler import Draining, Output, Plan, QueueFull, Request, Scheduler

__all__ = ["Engine", "EngineFailed", "Request", "QueueFull", "Draining"]


class EngineFailed(Exception):
    pass


class Engine:
    def __init__(self, programs: pool_lib.Programs, eos_id: int, max_queue: int = 64, align: bool = True,
                 metrics=None, on_failure=None):
        self.programs = programs
        self.spec = programs.spec
        self.eos_id = -1 if eos_id is None else int(eos_id)
        self.metrics = metrics
        self.slot_bytes = programs.slot_bytes()
        self.pool = programs.empty_pool()
        self.widths = pool_lib.decode_widths(self.spec.slots)
        self.scheduler = Scheduler(self.spec.slots, self.spec.unit, self.widths, align, max_queue,
                                   programs.max_steps, max(programs.admit_sizes), self.eos_id)
        self.scheduler.observer = metrics.observer() if metrics is not None else None
        self.cancels: list = []
        self.lock = threading.Condition()
        self.draining = False
        self.stopped = False
        self.on_failure = on_failure
        self.thread = threading.Thread(target=self._run, name="photon-serve-engine", daemon=True)
        self.error: BaseException | None = None
        # where the engine thread's time goes (/metrics): rounds in all; of them, waiting for the prefill
        # (insert) and the decode programs and their results; the rest is host work
        self.time_s = {"round": 0.0, "insert": 0.0, "decode": 0.0}

    # ------------------------------------------------------------------ public, any thread

    def start(self):
        self.thread.start()
        return self

    def submit(self, req: Request) -> Request:
        with self.lock:
            if self.error is not None:
                raise EngineFailed(f"the engine failed: {self.error}")
            if self.draining:
                raise Draining("the server is shutting down")
            self.scheduler.enqueue(req)
            self.lock.notify()
        return req

    def cancel(self, req: Request, reason: str = "abort", sample: int | None = None):
        """Free the request's slots (or only that of one sample) from the engine thread, soon."""
        with self.lock:
            self.cancels.append((req, reason, sample))
            self.lock.notify()

    def drain(self, grace_s: float) -> None:
        """Stop admitting; wait up to grace_s for the requests in flight, then cut the rest ("abort")."""
        with self.lock:
            self.draining = True
            for req in list(self.scheduler.waiting):
                self.cancels.append((req, "abort", None))
            self.lock.notify()
        deadline = time.monotonic() + grace_s
        while (self.busy or self.queued) and time.monotonic() < deadline and self.thread.is_alive():
            time.sleep(0.02)
        with self.lock:
            for req in {o[0] for o in self.scheduler.owner if o is not None}:
                self.cancels.append((req, "abort", None))
            self.lock.notify()
        while self.busy and self.thread.is_alive():
            time.sleep(0.01)

    def stop(self):
        with self.lock:
            self.stopped = True
            self.lock.notify()
        self.thread.join(timeout=30)

    @property
    def busy(self) -> int:
        return self.scheduler.busy

    @property
    def queued(self) -> int:
        return len(self.scheduler.waiting)

    @property
    def peak_busy(self) -> int:
        return self.scheduler.peak_busy

    @property
    def tokens_out(self) -> int:
        return self.scheduler.tokens_out

    def compiled_programs(self) -> int:
        return len(self.programs.compiled)

    def warm_up(self, widths=None):
        """Compile every program now, so that no request waits for a compile."""
        self.pool = self.programs.warm_up(self.pool, self.eos_id, widths)
        self.pool["active"].block_until_ready()

    # ------------------------------------------------------------------ engine thread

    def _run(self):
        try:
            while True:
                with self.lock:
                    while not (self.stopped or self.cancels or self.scheduler.waiting or self.busy):
                        self.lock.wait(0.1)
                    if self.stopped:
                        return
                    cancels, self.cancels = self.cancels, []
                    for req, reason, sample in cancels:
                        self.scheduler.cancel(req, reason, sample)
                    self.scheduler.expire(time.perf_counter())
                    plan = self.scheduler.schedule()
                t0 = time.perf_counter()
                self._run_plan(plan)
                self.time_s["round"] += time.perf_counter() - t0
        except BaseException as e:  # surfaced on /health, to every request, and to the supervisor
            with self.lock:
                self.error = e
                self.scheduler.fail_all("error")
            if self.on_failure is not None:
                self.on_failure(e)
            raise

    def _run_plan(self, plan: Plan):
        if plan.release:
            mask = np.zeros(self.spec.slots, bool)
            mask[list(plan.release)] = True
            self.pool = self.programs.release(self.pool, mask)
        t0 = time.perf_counter()
        for admission in plan.admissions:
            self._insert(admission)
        if plan.admissions:
            jax.block_until_ready(self.pool["active"])  # so that the prefill's time is counted as such
        self.time_s["insert"] += time.perf_counter() - t0
        if not plan.width:
            return
        logp_nv = None
        if plan.logprobs:  # the distribution each token is drawn from, before the step samples it
            logits = self.programs.next_logits(self.pool, plan.width)
            logp_nv = logits - logits.max(-1, keepdims=True)
            logp_nv -= np.log(np.exp(logp_nv).sum(-1, keepdims=True))
        t0 = time.perf_counter()
        self.pool, view = self.programs.decode(self.pool, plan.steps, self.eos_id, plan.width)
        count, finish, new = (np.asarray(view[k]) for k in ("count", "finish", "new"))
        self.time_s["decode"] += time.perf_counter() - t0
        lps = None
        if logp_nv is not None:
            lps = [None] * plan.width
            for slot, o in enumerate(self.scheduler.owner[: plan.width]):
                if o is not None and o[0].logprobs is not None and count[slot]:
                    lps[slot] = [_logprob_entry(logp_nv[slot], int(new[slot, 0]), o[0].logprobs)]
        with self.lock:
            self.scheduler.update(plan, Output(count, new, finish, lps), time.perf_counter())

    def _insert(self, admission):
        """One insert program call for a batch of requests (each prompt prefilled once for its n samples)."""
        reqs = admission.requests
        source = np.full(self.spec.slots, -1, np.int32)
        row_id = np.zeros(self.spec.slots, np.int32)
        for i, (req, slots) in enumerate(zip(reqs, admission.slots)):
            source[list(slots)] = i
            row_id[list(slots)] = np.arange(req.n)  # sample s draws as row s of `generate` (sampling.position_keys)
        budgets = [min(len(r.prompt) + r.max_tokens, 2**31 - 1) for r in reqs]
        try:
            self.pool = self.programs.insert(self.pool, [r.prompt for r in reqs], budgets,
                                             [min(b, self.spec.cap) for b in budgets], source, row_id, _knobs(reqs))
        except (OverflowError, ValueError, TypeError) as e:  # raised on the host, before the pool is touched
            with self.lock:
                for req in reqs:
                    self.scheduler.cancel(req, "error")
            print(f"photon-jax serve: a request's inputs were refused by the insert program: {e}", flush=True)


def _knobs(reqs: list) -> dict:
    """Each pool knob (pool.KNOBS), one value per request."""
    return {k: [getattr(r, k) for r in reqs] for k in pool_lib.KNOBS}


def _logprob_entry(logp_v: np.ndarray, token: int, top: int) -> dict:
    entry = {"token": token, "logprob": float(logp_v[token])}
    if top:
        best = np.argsort(-logp_v)[:top]
        entry["top"] = {int(t): float(logp_v[t]) for t in best}
    return entry

