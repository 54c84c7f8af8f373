"""The serving engine: one thread owns the slot pool; requests come in through a bounded queue.

Each iteration: drop cancelled / timed-out rows, admit waiting requests into the lowest free slots (one
insert program per request: the prompt is prefilled once for its n samples), run one decode step over
the rows up to the highest busy slot (pool.decode_widths), hand every new token to its request's sink,
free finished slots at once.

Slot schedule over the hierarchy (docs/serving.md): a PHOTON decode step runs the levels above
the tokens only when some row crosses a unit boundary (photon_runner.py, lax.cond). Rows whose
token counts differ modulo the meta-context B cross at different steps, so with many rows nearly
every step would pay the upper levels. With `align` (default) every busy row has the same
count modulo B: a request of P prompt tokens is admitted only when P = phase (mod B), which
delays its first token by at most B - 1 steps, and all rows cross boundaries together.

Sinks are called from the engine thread: sink(kind, sample, payload) with kind "tokens"
(payload: (ids, logprobs or None)) or "done" (payload: finish reason).
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from collections import deque

import numpy as np

from photon_jax.generation.loop import CONTEXT, EOS, LENGTH, RUNNING
from photon_jax.serve import pool as pool_lib

FINISH = {EOS: "stop", LENGTH: "length", CONTEXT: "length"}


class QueueFull(Exception):
    pass


class Draining(Exception):
    pass


@dataclasses.dataclass(eq=False)
class Request:
    prompt: list[int]
    max_tokens: int
    sink: object  # callable(kind, sample, payload)
    n: int = 1
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    stop_ids: frozenset = frozenset()
    logprobs: int | None = None  # top alternatives per token (0: only the sampled token's)
    timeout_s: float | None = None
    # vLLM's dialect (sampling.adjust_logits); min_tokens also keeps stop_ids from ending the sample early
    ignore_eos: bool = False
    min_tokens: int = 0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # engine-side state
    id: int = 0
    arrived: float = 0.0
    first_token: float | None = None
    slots: list = dataclasses.field(default_factory=list)
    open_samples: int = 0


class Engine:
    def __init__(self, programs: pool_lib.Programs, eos_id: int, max_queue: int = 64, align: bool = True,
                 metrics=None):
        self.programs = programs
        self.spec = programs.spec
        self.eos_id = -1 if eos_id is None else int(eos_id)
        self.max_queue = max_queue
        self.align = align
        self.metrics = metrics
        self.slot_bytes = pool_lib.tree_nbytes(pool_lib.pool_shapes(programs.params, dataclasses.replace(
            self.spec, slots=1)))
        self.pool = programs.empty_pool()
        self.owner: list = [None] * self.spec.slots  # slot -> (request, sample); the lowest free slots fill first
        self.widths = pool_lib.decode_widths(self.spec.slots)
        self.seen = np.zeros(self.spec.slots, np.int64)  # tokens already handed out per slot
        self.length = np.zeros(self.spec.slots, np.int64)
        self.last_t = np.zeros(self.spec.slots)  # when each slot last handed out a token
        self.waiting: deque = deque()
        self.cancels: list = []
        self.lock = threading.Condition()
        self.ids = itertools.count(1)
        self.draining = False
        self.stopped = False
        self.steps = 0
        self.peak_busy = 0
        self.tokens_out = 0
        self.thread = threading.Thread(target=self._run, name="photon-serve-engine", daemon=True)
        self.error: BaseException | None = None

    # ------------------------------------------------------------------ public, any thread

    def start(self):
        self.thread.start()
        return self

    def submit(self, req: Request) -> Request:
        with self.lock:
            if self.draining:
                raise Draining("the server is shutting down")
            if len(self.waiting) >= self.max_queue:
                raise QueueFull(f"the wait queue is full ({self.max_queue} requests)")
            req.id = next(self.ids)
            req.arrived = time.perf_counter()
            req.open_samples = req.n
            self.waiting.append(req)
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
            waiting, self.waiting = list(self.waiting), deque()
        for req in waiting:
            for s in range(req.n):
                req.sink("done", s, "abort")
        deadline = time.monotonic() + grace_s
        while self.busy and time.monotonic() < deadline:
            time.sleep(0.02)
        with self.lock:
            for req in {o[0] for o in self.owner if o is not None}:
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
        return sum(o is not None for o in self.owner)

    @property
    def queued(self) -> int:
        return len(self.waiting)

    def compiled_programs(self) -> int:
        return len(self.programs.compiled)

    def warm_up(self, widths=None):
        """Compile the decode program and the insert program of every prompt bucket now."""
        for width in widths or pool_lib.buckets(self.spec.cfg, self.spec.cap):
            mask = np.zeros(self.spec.slots, bool)
            self.pool = self.programs.insert(self.pool, [0], min(width, self.spec.cap), 1, 1, mask,
                                             np.zeros(self.spec.slots, np.int32), _knobs(Request([0], 1, None)))
        for width in self.widths:
            self.pool, _ = self.programs.decode(self.pool, 0, self.eos_id, width)
        self.pool = self.programs.release(self.pool, np.zeros(self.spec.slots, bool))
        self.pool["active"].block_until_ready()

    # ------------------------------------------------------------------ engine thread

    def _run(self):
        try:
            while True:
                with self.lock:
                    while not (self.stopped or self.cancels or self.waiting or self.busy):
                        self.lock.wait(0.1)
                    if self.stopped:
                        return
                    cancels, self.cancels = self.cancels, []
                for req, reason, sample in cancels:
                    self._free(req, reason, sample)
                self._expire()
                self._admit()
                if self.busy:
                    self._step()
        except BaseException as e:  # surfaced on /health and to every request in flight
            self.error = e
            for req in {o[0] for o in self.owner if o is not None} | set(self.waiting):
                for s in range(req.n):
                    req.sink("done", s, "error")
            raise

    def _phase(self):
        """The shared token count modulo the meta-context of the busy rows (None: no row busy)."""
        for slot, o in enumerate(self.owner):
            if o is not None:
                return int(self.length[slot]) % self.spec.unit
        return None

    def _admit(self):
        free = [s for s, o in enumerate(self.owner) if o is None]
        if not free:
            return
        with self.lock:
            candidates = list(self.waiting)
        for req in candidates:
            if len(free) < req.n:
                break  # first come, first served for the slots (n > pool is refused at the door)
            phase = self._phase()
            if self.align and phase is not None and len(req.prompt) % self.spec.unit != phase:
                continue  # joins when the pool's phase comes round (at most B - 1 steps)
            with self.lock:
                self.waiting.remove(req)
            slots, free = free[: req.n], free[req.n:]
            self._insert(req, slots)

    def _insert(self, req: Request, slots: list[int]):
        mask = np.zeros(self.spec.slots, bool)
        mask[slots] = True
        row_id = np.zeros(self.spec.slots, np.int32)
        row_id[slots] = np.arange(req.n)  # sample s draws as row s of `generate` (sampling.position_keys)
        p = len(req.prompt)
        width = next(w for w in pool_lib.buckets(self.spec.cfg, self.spec.cap)
                     if w >= pool_lib.prompt_width(self.spec.cfg, p))
        budget = p + req.max_tokens
        self.pool = self.programs.insert(self.pool, req.prompt, width, budget, min(budget, self.spec.cap), mask,
                                         row_id, _knobs(req))
        req.slots = list(slots)
        for s, slot in enumerate(slots):
            self.owner[slot] = (req, s)
            self.seen[slot] = p
            self.length[slot] = p
        self.peak_busy = max(self.peak_busy, self.busy)

    def _expire(self):
        now = time.perf_counter()
        for req in {o[0] for o in self.owner if o is not None}:
            if req.timeout_s is not None and now - req.arrived > req.timeout_s:
                self._free(req, "abort")
        with self.lock:
            late = [r for r in self.waiting if r.timeout_s is not None and now - r.arrived > r.timeout_s]
            for r in late:
                self.waiting.remove(r)
        for r in late:
            for s in range(r.n):
                r.sink("done", s, "abort")

    def _free(self, req: Request, reason: str, sample: int | None = None):
        """Release the slots the request (or one of its samples) still holds; report them finished."""
        with self.lock:
            if req in self.waiting and sample is None:
                self.waiting.remove(req)
                for s in range(req.n):
                    req.sink("done", s, reason)
                return
        mask = np.zeros(self.spec.slots, bool)
        for slot, o in enumerate(self.owner):
            if o is not None and o[0] is req and sample in (None, o[1]):
                mask[slot] = True
                self.owner[slot] = None
                req.sink("done", o[1], reason)
        if mask.any():
            self.pool = self.programs.release(self.pool, mask)

    def _step(self):
        top = max(slot for slot, o in enumerate(self.owner) if o is not None)
        width = next(w for w in self.widths if w > top)
        want_lp = any(o is not None and o[0].logprobs is not None for o in self.owner)
        logp_nv = None
        if want_lp:  # the distribution each token is drawn from, before the step samples it
            logits = self.programs.next_logits(self.pool, width)
            logp_nv = logits - logits.max(-1, keepdims=True)
            logp_nv -= np.log(np.exp(logp_nv).sum(-1, keepdims=True))
        self.pool, view = self.programs.decode(self.pool, 1, self.eos_id, width)
        last, length, finish = (np.array(view[k]) for k in ("last", "length", "finish"))
        now = time.perf_counter()
        self.steps += 1
        stopped_by_id = np.zeros(self.spec.slots, bool)
        for slot, o in enumerate(self.owner[:width]):
            if o is None:
                continue
            req, sample = o
            new = [int(last[slot])] if length[slot] > self.seen[slot] else []  # one step: at most one token
            code = int(finish[slot])
            early = length[slot] - len(req.prompt) <= req.min_tokens  # vLLM: a stop token may end token min + 1
            cut = None if early else next((i for i, t in enumerate(new) if t in req.stop_ids), None)
            if cut is not None:
                new = new[: cut + 1]
                code = EOS
                stopped_by_id[slot] = True
            drawn = new  # logprobs cover the stop token too (OpenAI, vLLM): lm-eval's echo scoring drops the last
            if code == EOS and new and new[-1] in req.stop_ids | {self.eos_id}:
                new = new[:-1]  # the stop token is not part of the text (OpenAI); its count is in usage
                req_count = 1
            else:
                req_count = 0
            self.seen[slot] = length[slot]
            self.length[slot] = length[slot]
            if new or req_count:
                if req.first_token is None:
                    req.first_token = now
                    if self.metrics:
                        self.metrics.ttft.observe(now - req.arrived)
                elif self.metrics:
                    self.metrics.itl.observe(now - self.last_t[slot])
                self.last_t[slot] = now
                lp = None
                if logp_nv is not None and drawn:
                    lp = [_logprob_entry(logp_nv[slot], drawn[0], req.logprobs)]
                req.sink("tokens", sample, (new, lp, len(new) + req_count))
                self.tokens_out += len(new) + req_count
                if self.metrics:
                    self.metrics.tokens.inc(len(new) + req_count)
            if code != RUNNING:
                self.owner[slot] = None
                req.sink("done", sample, FINISH[code])
        if stopped_by_id.any():  # the device row would go on: stop it now
            self.pool = self.programs.release(self.pool, stopped_by_id)


def _knobs(req: Request) -> dict:
    return {"seed": req.seed, "temperature": req.temperature, "top_k": req.top_k, "top_p": req.top_p,
            "ignore_eos": req.ignore_eos, "min_tokens": req.min_tokens, "repetition_penalty": req.repetition_penalty,
            "presence_penalty": req.presence_penalty, "frequency_penalty": req.frequency_penalty}


def _logprob_entry(logp_v: np.ndarray, token: int, top: int) -> dict:
    entry = {"token": token, "logprob": float(logp_v[token])}
    if top:
        best = np.argsort(-logp_v)[:top]
        entry["top"] = {int(t): float(logp_v[t]) for t in best}
    return entry
