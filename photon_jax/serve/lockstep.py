"""Multi-process serving: process 0 serves HTTP and runs the engine; every process runs its programs.

The pool and the params span every process's devices, so each device program (insert, decode,
release, the next-token logits for `logprobs`, the prompt scorer for `echo`) must be launched by
all processes with the same inputs in the same order. `LockstepPrograms` has pool.Programs'
interface: on process 0 each call goes through photon_jax/lockstep.py's Lockstep (broadcast, then run
here); the other processes sit in `follow()` and run the same calls until process 0 sends "stop".
One lock orders the engine thread's calls and the scorer's (HTTP worker threads) into one sequence.

The pool lives here, on every process; the engine's `pool` argument is that same pool (process 0's
copy), and what process 0 reads back is replicated (pool.Programs' `host` sharding).
With one process nothing of this is used (launch.py builds pool.Programs directly).
"""

from __future__ import annotations

import threading
import time

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from photon_jax.lockstep import Lockstep
from photon_jax.serve import pool as pool_lib

# An idle server still calls every this many seconds: the other processes wait for process 0 inside a
# collective, and no transport's timeout (gloo, NCCL watchdogs) should see one wait for hours.
KEEPALIVE_S = 10.0


def replicated(params):
    """A sharding that puts a whole array on every device of the params' mesh (None if there is none)."""
    sharding = jax.tree.leaves(params)[0].sharding
    return NamedSharding(sharding.mesh, PartitionSpec()) if isinstance(sharding, NamedSharding) else None


class LockstepPrograms:
    def __init__(self, programs: pool_lib.Programs, scorer=None, keepalive_s: float = KEEPALIVE_S):
        self.inner = programs
        self.spec, self.params, self.compiled = programs.spec, programs.params, programs.compiled
        self.max_steps, self.admit_sizes = programs.max_steps, programs.admit_sizes
        self.slot_bytes = programs.slot_bytes
        self.scorer = scorer
        self.pool = programs.empty_pool()  # every process runs this constructor, so every process makes it
        self.lock = threading.Lock()
        self.lockstep = Lockstep({"insert": self._insert, "decode": self._decode, "release": self._release,
                                  "logits": self._logits, "score": self._score, "ping": lambda payload: None})
        self.last_call = time.monotonic()
        self.stopped = threading.Event()
        if scorer is not None:
            scorer.forward = self._score_everywhere
        self.keepalive_s = keepalive_s

    # ---- process 0: pool.Programs' interface (the engine's pool argument is self.pool)

    def empty_pool(self):
        return self.pool

    def insert(self, pool, prompts, budgets, stops, source_n, row_id_n, knobs, width=None):
        return self._call("insert", {"prompts": [[int(t) for t in p] for p in prompts],
                                     "width": None if width is None else int(width),
                                     "budgets": [int(b) for b in budgets], "stops": [int(s) for s in stops],
                                     "source": np.asarray(source_n, np.int32),
                                     "row_id": np.asarray(row_id_n, np.int32),
                                     "knobs": {k: np.asarray(v, pool_lib.KNOBS[k]).tolist() for k, v in knobs.items()}})

    warm_up = pool_lib.Programs.warm_up  # through this class's insert / decode / release: every process compiles

    def decode(self, pool, steps, eos_id, width=None):
        width = int(width or self.spec.slots)
        return self._call("decode", {"steps": int(steps), "eos_id": int(eos_id), "width": width})

    def release(self, pool, mask_n):
        return self._call("release", {"mask": np.asarray(mask_n, bool)})

    def next_logits(self, pool, width):
        return self._call("logits", {"width": int(width)})

    def _score_everywhere(self, tokens_bt):
        return self._call("score", {"tokens": np.asarray(tokens_bt, np.int32)})

    def _call(self, op, payload):
        with self.lock:
            if self.stopped.is_set():
                raise RuntimeError("the other processes were stopped")
            self.last_call = time.monotonic()
            return self.lockstep.call(op, payload)

    def start_keepalive(self):
        def loop():
            while not self.stopped.wait(1.0):
                if time.monotonic() - self.last_call > self.keepalive_s:
                    try:
                        self._call("ping", None)
                    except RuntimeError:  # stopped meanwhile
                        return
        threading.Thread(target=loop, name="photon-serve-keepalive", daemon=True).start()
        return self

    def stop(self, error: str | None = None):
        """Process 0: release the others (always, also after an error); later calls fail."""
        with self.lock:
            if not self.stopped.is_set():
                self.stopped.set()
                self.lockstep.stop(error)

    # ---- the other processes

    def follow(self):
        """Run what process 0 asks until it stops."""
        self.lockstep.serve()

    # ---- handlers: every process, same payloads, same order

    def _insert(self, p):
        self.pool = self.inner.insert(self.pool, p["prompts"], p["budgets"], p["stops"],
                                      np.asarray(p["source"], np.int32), np.asarray(p["row_id"], np.int32),
                                      p["knobs"], p["width"])
        return self.pool

    def _decode(self, p):
        self.pool, view = self.inner.decode(self.pool, p["steps"], p["eos_id"], p["width"])
        return self.pool, view

    def _release(self, p):
        self.pool = self.inner.release(self.pool, np.asarray(p["mask"], bool))
        return self.pool

    def _logits(self, p):
        return self.inner.next_logits(self.pool, p["width"])

    def _score(self, p):
        return self.scorer.device_forward(np.asarray(p["tokens"], np.int32))
