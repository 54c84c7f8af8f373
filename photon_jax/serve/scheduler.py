"""What the serving engine does next, decided from host state alone (no device code here).

The engine (engine.py) asks `schedule()` for a Plan, runs the pool programs it names, and hands the
decode's output to `update()`, which turns it into typed events for each request's sink and frees the
finished slots. This split is vLLM's (schedule / update_from_output): every policy below is tested
in milliseconds with fake programs (tests/test_serve_scheduler.py), without compiling a model.

Policies:
* Admission: waiting requests, oldest first, go into the lowest free slots; up to `admit_batch` of
  them share one insert program call (a burst is prefilled in a few calls, not one per request).
* Alignment (`align`, docs/serving.md): every busy row has the same token count modulo the
  meta-context B, so all rows cross the hierarchy's unit boundaries on the same steps. A request of P
  prompt tokens joins only when P = phase (mod B); the decode runs exactly as many steps as it takes
  for the phase to come round (at most B - 1), so it waits no longer than it must.
* Steps per decode call: `max_steps` (tokens are read back once per call), one when a request wants
  logprobs (they are read per step), fewer when a waiting request with free slots waits for its phase.
* Queue: a request is refused (QueueFull, HTTP 429) only when the samples already waiting fill the
  free slots and `max_queue` more: a burst is never refused while slots stand free.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections import deque

from photon_jax.generation.loop import CONTEXT, EOS, LENGTH, RUNNING

FINISH = {EOS: "stop", LENGTH: "length", CONTEXT: "length"}


class QueueFull(Exception):
    pass


class Draining(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class Tokens:
    """New tokens of one sample. ids exclude a stop token (not part of the text); count includes it
    (usage counts it); logprobs: one entry per drawn token (stop token included), or None."""
    sample: int
    ids: list
    logprobs: list | None
    count: int


@dataclasses.dataclass(frozen=True)
class Done:
    sample: int
    reason: str  # "stop" | "length" | "abort" | "error"


@dataclasses.dataclass(eq=False)
class Request:
    prompt: list[int]
    max_tokens: int
    sink: object  # callable(list of Tokens | Done), called from the engine thread
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
    # scheduler state
    id: int = 0
    arrived: float = 0.0
    first_token: float | None = None


@dataclasses.dataclass(frozen=True)
class Admission:
    """One insert program call: requests[i] goes into slots[i] (one slot per sample)."""
    requests: tuple
    slots: tuple


@dataclasses.dataclass(frozen=True)
class Plan:
    release: tuple = ()  # slots to mark inactive on the device before anything else
    admissions: tuple = ()
    width: int = 0  # decode the first `width` rows; 0: no decode this round
    steps: int = 0
    logprobs: bool = False  # read next-token logits before the (single) step


@dataclasses.dataclass(frozen=True)
class Output:
    """What one decode call returned, per decoded row: tokens generated (count) and the first
    `count` of them (new, each row's list), finish code, and per-token log-probs when asked."""
    count: list
    new: list
    finish: list
    logprobs: list | None = None  # per row: a list of entries (one per new token) or None


class Scheduler:
    def __init__(self, slots: int, unit: int, widths: tuple, align: bool = True, max_queue: int = 64,
                 max_steps: int = 8, admit_batch: int = 8, eos_id: int = -1):
        self.slots, self.unit, self.widths = slots, unit, widths
        self.align, self.max_queue, self.max_steps, self.admit_batch = align, max_queue, max_steps, admit_batch
        self.eos_id = eos_id
        self.owner: list = [None] * slots  # slot -> (request, sample)
        self.length = [0] * slots  # tokens in the row (prompt + generated)
        self.budget = [0] * slots  # length at which the row ends by max_tokens / context
        self.last_t = [0.0] * slots
        self.waiting: deque = deque()
        self.released: list = []  # slots freed on the host whose device rows must be marked inactive
        self.ids = itertools.count(1)
        self.peak_busy = 0
        self.tokens_out = 0
        self.observer = None  # metrics: first_token(seconds), gap(seconds between a sample's deliveries), tokens(k)

    # ------------------------------------------------------------------ queue (the engine holds its lock)

    @property
    def busy(self) -> int:
        return sum(o is not None for o in self.owner)

    @property
    def free(self) -> int:
        return self.slots - self.busy

    def enqueue(self, req: Request, now: float | None = None) -> Request:
        waiting_samples = sum(r.n for r in self.waiting)
        if waiting_samples + req.n > self.free + self.max_queue:
            raise QueueFull(f"the wait queue is full ({len(self.waiting)} requests wait, {self.free} slots free, "
                            f"--max-queue {self.max_queue})")
        req.id = next(self.ids)
        req.arrived = time.perf_counter() if now is None else now
        self.waiting.append(req)
        return req

    def cancel(self, req: Request, reason: str, sample: int | None = None) -> None:
        """End the request (or one sample): waiting ones leave the queue, running rows are freed."""
        if req in self.waiting and sample is None:
            self.waiting.remove(req)
            _emit(req, [Done(s, reason) for s in range(req.n)])
            return
        events = []
        for slot, o in enumerate(self.owner):
            if o is not None and o[0] is req and sample in (None, o[1]):
                self._free(slot)
                events.append(Done(o[1], reason))
        _emit(req, events)

    def expire(self, now: float) -> None:
        late = {o[0] for o in self.owner if o is not None and _late(o[0], now)}
        late |= {r for r in self.waiting if _late(r, now)}
        for req in late:
            self.cancel(req, "abort")

    def fail_all(self, reason: str = "error") -> None:
        for req in {o[0] for o in self.owner if o is not None} | set(self.waiting):
            self.cancel(req, reason)

    # ------------------------------------------------------------------ planning

    def phase(self) -> int | None:
        """The busy rows' shared token count modulo the meta-context (None: no row busy)."""
        for slot, o in enumerate(self.owner):
            if o is not None:
                return self.length[slot] % self.unit
        return None

    def schedule(self) -> Plan:
        release, self.released = tuple(self.released), []
        admissions = self._admit()
        if not self.busy:
            return Plan(release, admissions)
        top = max(slot for slot, o in enumerate(self.owner) if o is not None)
        width = next(w for w in self.widths if w > top)
        wants_lp = any(o is not None and o[0].logprobs is not None for o in self.owner)
        return Plan(release, admissions, width, 1 if wants_lp else self._steps(), wants_lp)

    def _admit(self) -> tuple:
        free = [s for s, o in enumerate(self.owner) if o is None]
        phase = self.phase()
        calls, batch, slots = [], [], []
        for req in list(self.waiting):
            if len(free) < req.n:
                break  # first come, first served for the slots (n > pool is refused at the door)
            if self.align and phase is not None and len(req.prompt) % self.unit != phase:
                continue  # joins when the pool's phase comes round
            self.waiting.remove(req)
            mine, free = tuple(free[: req.n]), free[req.n:]
            self._place(req, mine)
            phase = self.phase()
            batch.append(req)
            slots.append(mine)
            if len(batch) == self.admit_batch:
                calls.append(Admission(tuple(batch), tuple(slots)))
                batch, slots = [], []
        if batch:
            calls.append(Admission(tuple(batch), tuple(slots)))
        return tuple(calls)

    def _place(self, req: Request, slots: tuple) -> None:
        p = len(req.prompt)
        for s, slot in enumerate(slots):
            self.owner[slot] = (req, s)
            self.length[slot] = p
            self.budget[slot] = p + req.max_tokens
        self.peak_busy = max(self.peak_busy, self.busy)

    def _steps(self) -> int:
        """Decode steps for this call: max_steps, unless the oldest waiting request has its slots free and
        waits only for its phase: then exactly the steps until that phase. A request waiting for a slot
        does not shorten the call: rows end at any step (EOS), and a short call costs a whole call's
        overhead for every busy row, while a row that ends early idles at most max_steps - 1 steps."""
        if not (self.waiting and self.align) or self.waiting[0].n > self.free:
            return self.max_steps
        phase = self.phase()
        return max(1, min(self.max_steps, (len(self.waiting[0].prompt) - phase) % self.unit or self.unit))

    # ------------------------------------------------------------------ applying a decode's output

    def update(self, plan: Plan, out: Output, now: float) -> None:
        """Hand each decoded row's new tokens to its request; free the rows that ended."""
        per_request: dict = {}
        for slot in range(plan.width):
            o = self.owner[slot]
            if o is None:
                continue
            req, sample = o
            count = int(out.count[slot])
            ids = [int(t) for t in out.new[slot][:count]]
            code = int(out.finish[slot])
            made = self.length[slot] - len(req.prompt)  # output tokens before this call
            # a stop id ends the sample from output token min_tokens + 1 on (vLLM)
            cut = next((i for i, t in enumerate(ids) if t in req.stop_ids and made + i + 1 > req.min_tokens), None)
            stopped_by_id = cut is not None
            if stopped_by_id:
                ids, code = ids[: cut + 1], EOS
            drawn = list(ids)  # logprobs cover the stop token too (OpenAI, vLLM)
            counted = len(ids)
            if code == EOS and ids and ids[-1] in req.stop_ids | {self.eos_id}:
                ids = ids[:-1]  # the stop token is not part of the text; usage counts it
            self.length[slot] += count
            events = per_request.setdefault(id(req), (req, []))[1]
            if counted:
                self._observe(req, slot, now)
                lps = None
                if out.logprobs is not None and out.logprobs[slot] is not None:
                    lps = list(out.logprobs[slot][: len(drawn)])
                events.append(Tokens(sample, ids, lps, counted))
                self.tokens_out += counted
                if self.observer:
                    self.observer.tokens(counted)
            if code != RUNNING:
                self.owner[slot] = None
                if stopped_by_id:  # the device row would go on: stop it
                    self.released.append(slot)
                events.append(Done(sample, FINISH[code]))
        for req, events in per_request.values():
            _emit(req, events)

    def _observe(self, req: Request, slot: int, now: float) -> None:
        if req.first_token is None:
            req.first_token = now
            if self.observer:
                self.observer.first_token(now - req.arrived)
        elif self.observer:
            self.observer.gap(now - self.last_t[slot])
        self.last_t[slot] = now

    def _free(self, slot: int) -> None:
        self.owner[slot] = None
        self.released.append(slot)


def _late(req: Request, now: float) -> bool:
    return req.timeout_s is not None and now - req.arrived > req.timeout_s


def _emit(req: Request, events: list) -> None:
    if events:
        req.sink(events)
