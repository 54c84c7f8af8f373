"""The serving scheduler (photon_jax/serve/scheduler.py) from host state alone, and the engine's loop over
a fake program set whose tokens can be worked out by hand: milliseconds, no model compiled.

The real programs behind the same interface are tests/test_serve_engine.py's.
"""

import json
import threading
import types

import numpy as np
import pytest

from photon_jax.generation.loop import EOS, LENGTH, RUNNING
from photon_jax.serve.engine import Engine
from photon_jax.serve.scheduler import Done, Output, QueueFull, Request, Scheduler, Tokens


class Log:
    def __init__(self):
        self.events = []

    def __call__(self, events):
        self.events += events

    def tokens(self, sample=0):
        return [t for e in self.events if isinstance(e, Tokens) and e.sample == sample for t in e.ids]

    def reasons(self):
        return [e.reason for e in self.events if isinstance(e, Done)]


def _req(prompt_len, max_tokens=8, n=1, **kw):
    return Request(prompt=list(range(1, prompt_len + 1)), max_tokens=max_tokens, sink=Log(), n=n, **kw)


def _sched(slots=4, unit=1, max_queue=0, max_steps=4, admit_batch=8, align=True):
    widths = tuple(w for w in (2, 4, 8, 16) if w < slots) + (slots,)
    return Scheduler(slots, unit, widths, align, max_queue, max_steps, admit_batch, eos_id=0)


def _output(plan, rows: dict):
    """rows: slot -> (new tokens, finish code); every other decoded row made no token."""
    count, new, finish = [0] * plan.width, [[0] * 8 for _ in range(plan.width)], [RUNNING] * plan.width
    for slot, (ids, code) in rows.items():
        count[slot], finish[slot] = len(ids), code
        new[slot] = list(ids) + [0] * (8 - len(ids))
    return Output(count, new, finish)


def test_a_burst_waits_while_slots_are_free_and_is_refused_only_past_free_plus_max_queue():
    s = _sched(slots=4, max_queue=2)
    for _ in range(6):  # 4 free slots + 2 queue places
        s.enqueue(_req(3))
    with pytest.raises(QueueFull, match="4 slots free"):
        s.enqueue(_req(3))
    big = _sched(slots=4, max_queue=0)
    big.enqueue(_req(3, n=3))
    with pytest.raises(QueueFull):
        big.enqueue(_req(3, n=2))  # samples count: 3 + 2 > 4


def test_waiting_requests_are_admitted_in_batches_into_the_lowest_slots():
    s = _sched(slots=8, admit_batch=2)
    reqs = [s.enqueue(_req(3 + i)) for i in range(4)] + [s.enqueue(_req(2, n=2))]
    plan = s.schedule()
    assert [len(a.requests) for a in plan.admissions] == [2, 2, 1]
    assert [a.slots for a in plan.admissions] == [((0,), (1,)), ((2,), (3,)), ((4, 5),)]
    assert plan.admissions[0].requests == tuple(reqs[:2])
    assert plan.width == 8 and plan.steps == 4 and not plan.logprobs
    assert s.busy == 6 and not s.waiting


def test_aligned_admission_waits_for_the_phase_and_decodes_exactly_until_it():
    s = _sched(slots=4, unit=4)
    first = s.enqueue(_req(5, max_tokens=20))  # phase 1
    assert s.schedule().admissions[0].requests == (first,)
    late = s.enqueue(_req(7))  # phase 3: two steps away
    plan = s.schedule()
    assert plan.admissions == () and plan.steps == 2
    s.update(plan, _output(plan, {0: ([9, 9], RUNNING)}), 1.0)
    assert s.phase() == 3
    assert s.schedule().admissions[0].requests == (late,)
    unaligned = _sched(slots=4, unit=4, align=False)
    unaligned.enqueue(_req(5))
    unaligned.schedule()
    unaligned.enqueue(_req(7))
    assert len(unaligned.schedule().admissions) == 1


def test_steps_per_call_shrink_only_for_a_phase_or_logprobs():
    s = _sched(slots=2, max_steps=8, max_queue=1)
    s.enqueue(_req(3, max_tokens=30))
    s.enqueue(_req(3, max_tokens=5))
    assert s.schedule().steps == 8  # no one waits
    s.enqueue(_req(3))
    assert s.schedule().steps == 8  # no free slot: the call is not shortened (a row may end at any step)
    lp = _sched(slots=2)
    lp.enqueue(_req(3, logprobs=0))
    plan = lp.schedule()
    assert plan.steps == 1 and plan.logprobs


def test_update_cuts_at_a_stop_id_and_at_eos_counts_the_stop_token_and_frees_the_row():
    s = _sched(slots=4)
    by_id = s.enqueue(_req(3, stop_ids=frozenset({9})))
    by_eos = s.enqueue(_req(3))
    running = s.enqueue(_req(3, max_tokens=100))
    plan = s.schedule()
    # the device ran 4 steps: row 0 went past its stop id 9, row 1 drew EOS (0) at its 2nd token
    s.update(plan, _output(plan, {0: ([5, 9, 7, 7], RUNNING), 1: ([4, 0], EOS), 2: ([1, 2, 3, 4], RUNNING)}), 1.0)
    assert by_id.sink.tokens() == [5] and by_id.sink.reasons() == ["stop"]
    assert [e.count for e in by_id.sink.events if isinstance(e, Tokens)] == [2]  # the stop token is counted
    assert by_eos.sink.tokens() == [4] and by_eos.sink.reasons() == ["stop"]
    assert running.sink.tokens() == [1, 2, 3, 4] and running.sink.reasons() == []
    assert s.released == [0]  # only the row the host stopped must be stopped on the device
    assert s.owner[0] is None and s.owner[1] is None and s.owner[2] is not None
    assert s.tokens_out == 2 + 2 + 4
    assert len(by_id.sink.events) == 2  # one call per request per round: Tokens then Done, together


def test_length_finish_cancel_and_timeout():
    s = _sched(slots=4)
    short = s.enqueue(_req(3, max_tokens=2))
    waiting_cut = _req(3)
    plan = s.schedule()
    s.update(plan, _output(plan, {0: ([6, 7], LENGTH)}), 1.0)
    assert short.sink.reasons() == ["length"]
    s.enqueue(waiting_cut)
    s.cancel(waiting_cut, "abort")
    assert waiting_cut.sink.reasons() == ["abort"] and not s.waiting
    two = s.enqueue(_req(3, n=2))
    s.schedule()
    s.cancel(two, "stop", sample=1)
    assert two.sink.reasons() == ["stop"] and s.busy == 1
    late = s.enqueue(_req(3, timeout_s=0.5), now=0.0)
    s.expire(10.0)
    assert late.sink.reasons() == ["abort"]


class FakePrograms:
    """Each row's next token is its last token + 1 (mod 50); EOS is token 0. Rows live in plain arrays."""

    def __init__(self, slots=8, max_steps=4, admit_batch=4, cap=64):
        self.spec = types.SimpleNamespace(slots=slots, unit=1, cap=cap)
        self.max_steps, self.admit_sizes, self.compiled = max_steps, (1, admit_batch), set()
        self.calls = []

    def slot_bytes(self):
        return 1

    def empty_pool(self):
        n = self.spec.slots
        return {"last": np.zeros(n, int), "length": np.zeros(n, int), "budget": np.zeros(n, int),
                "active": np.zeros(n, bool)}

    def insert(self, pool, prompts, budgets, stops, source_n, row_id_n, knobs, width=None):
        self.calls.append(("insert", len(prompts)))
        for slot, src in enumerate(source_n):
            if src >= 0:
                pool["last"][slot], pool["length"][slot] = prompts[src][-1], len(prompts[src])
                pool["budget"][slot], pool["active"][slot] = stops[src], True
        return pool

    def decode(self, pool, steps, eos_id, width):
        self.calls.append(("decode", width, steps))
        count, new, finish = np.zeros(width, int), np.zeros((width, self.max_steps), int), np.zeros(width, int)
        for row in range(width):
            for step in range(steps):
                if not pool["active"][row]:
                    break
                tok = (pool["last"][row] + 1) % 50
                new[row, step], count[row] = tok, count[row] + 1
                pool["last"][row], pool["length"][row] = tok, pool["length"][row] + 1
                if tok == eos_id or pool["length"][row] >= pool["budget"][row]:
                    pool["active"][row] = False
                    finish[row] = EOS if tok == eos_id else LENGTH
        return pool, {"count": count, "finish": finish, "new": new}

    def release(self, pool, mask_n):
        self.calls.append(("release", int(mask_n.sum())))
        pool["active"] &= ~mask_n
        return pool


def test_engine_loop_over_fake_programs_streams_hand_computed_tokens():
    programs = FakePrograms()
    engine = Engine(programs, eos_id=0, max_queue=0).start()
    try:
        done = threading.Event()
        logs = []
        for last, max_tokens in ((10, 6), (45, 9), (20, 3)):  # 45 reaches EOS (0) after 5 tokens
            log = Log()
            orig = log.__call__

            def sink(events, log=log, orig=orig):
                orig(events)
                if all(len(lg.reasons()) == 1 for lg in logs):
                    done.set()
            logs.append(log)
            req = Request(prompt=[1, last], max_tokens=max_tokens, sink=sink)
            engine.submit(req)
        assert done.wait(10)
    finally:
        engine.stop()
    assert logs[0].tokens() == list(range(11, 17)) and logs[0].reasons() == ["length"]
    assert logs[1].tokens() == [46, 47, 48, 49] and logs[1].reasons() == ["stop"]
    assert logs[2].tokens() == [21, 22, 23] and logs[2].reasons() == ["length"]
    decodes = [c for c in programs.calls if c[0] == "decode"]
    assert all(c[2] <= 4 for c in decodes) and len(decodes) <= 6  # several steps per call
    assert engine.busy == 0 and engine.tokens_out == 6 + 5 + 3
    assert engine.time_s["round"] >= engine.time_s["decode"] + engine.time_s["insert"] > 0


class FailingPrograms(FakePrograms):
    """The second decode call raises, as a device program that dies would."""

    def decode(self, pool, steps, eos_id, width):
        if sum(c[0] == "decode" for c in self.calls) >= 1:
            raise RuntimeError("device lost")
        return super().decode(pool, steps, eos_id, width)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the thread re-raises
def test_an_engine_failure_ends_every_request_answers_503_and_tells_the_supervisor():
    from fastapi.testclient import TestClient

    from photon_jax.serve.app import Served, create_app
    from photon_jax.serve.metrics import Metrics
    from photon_jax.serve.text import TokenIdText

    failed = threading.Event()
    engine = Engine(FailingPrograms(), eos_id=0, max_queue=4, on_failure=lambda e: failed.set())
    running, waiting = Log(), Log()
    engine.submit(Request(prompt=[1, 2], max_tokens=20, sink=running))
    engine.start()
    assert failed.wait(10)
    assert running.reasons() == ["error"] and isinstance(engine.error, RuntimeError)
    client = TestClient(create_app(Served(engine, TokenIdText(), 50, "fake", 64, Metrics())))
    health = client.get("/health")
    assert health.status_code == 503 and "device lost" in health.json()["error"]["message"]
    reply = client.post("/v1/completions", json={"model": "fake", "prompt": [1, 2, 3], "max_tokens": 2})
    assert reply.status_code == 503 and reply.json()["error"]["type"] == "server_error"
    with pytest.raises(Exception, match="engine failed"):
        engine.submit(Request(prompt=[1], max_tokens=1, sink=waiting))


def test_stream_events_are_newline_separated_and_carry_every_token_and_the_usage():
    """vllm bench serve splits SSE events on "\\n\\n": with "\\r\\n" line ends, events that arrive in one read
    (the last tokens and the usage) were lost and the client fell back to re-tokenizing the text."""
    from fastapi.testclient import TestClient

    from photon_jax.serve.app import Served, create_app
    from photon_jax.serve.metrics import Metrics
    from photon_jax.serve.text import TokenIdText

    engine = Engine(FakePrograms(max_steps=4), eos_id=-1, max_queue=4).start()
    try:
        client = TestClient(create_app(Served(engine, TokenIdText(), 50, "fake", 64, Metrics())))
        body = {"model": "fake", "prompt": [1, 2], "max_tokens": 10, "stream": True,
                "stream_options": {"include_usage": True}}
        raw = client.post("/v1/completions", json=body).text
    finally:
        engine.stop()
    assert "\r" not in raw
    events = [e for e in raw.split("\n\n") if e.strip()]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    assert text.split() == [str(t) for t in range(3, 13)]  # each token the last + 1 (FakePrograms)
    assert chunks[-1]["usage"]["completion_tokens"] == 10
