"""One process decides, every process computes: the multi-process pattern of harness evaluation
(eval/backend.py) and of serving (serve/lockstep.py).

The evaluation harness and the HTTP server are plain Python that only one process should run (they read
datasets, build prompts, write results, answer clients). The model's programs, though, span every
process's devices, so every process must launch the same program with the same inputs at the same time.
Process 0 runs the harness; each time it needs the model it calls `Lockstep.call(op, payload)`, which
broadcasts (op, payload) to all processes and runs the handler locally; the other processes sit in
`Lockstep.serve()`, receive the same messages in the same order and run the same handlers, until
process 0 sends "stop" (always sent, also when the harness fails, so nobody waits forever).

With one process nothing is broadcast or serialised. Payloads are JSON values and numpy arrays.
"""

from __future__ import annotations

import json

import jax
import numpy as np
from jax.experimental import multihost_utils

from photon_jax.errors import UserError

STOP = "stop"


def _broadcast_bytes(data: bytes | None) -> bytes:
    """Process 0's bytes on every process (sizes rounded up to a power of two: few compiled programs)."""
    main = jax.process_index() == 0
    size = int(multihost_utils.broadcast_one_to_all(np.array([len(data) if main else 0], np.int32))[0])
    padded = 1 << max(size - 1, 0).bit_length()
    buffer = np.zeros((padded,), np.uint8)
    if main:
        buffer[:size] = np.frombuffer(data, np.uint8)
    return bytes(np.asarray(multihost_utils.broadcast_one_to_all(buffer), np.uint8)[:size])


def _plain(value):
    """numpy arrays in a payload travel as lists (with one process they are handed over as they are)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot send a {type(value).__name__} to the other processes")


class Lockstep:
    def __init__(self, handlers: dict):
        self.handlers = handlers
        self.multi = jax.process_count() > 1

    def _share(self, message: dict | None) -> dict:
        if not self.multi:
            return message
        data = json.dumps(message, default=_plain).encode() if jax.process_index() == 0 else None
        return json.loads(_broadcast_bytes(data))

    def call(self, op: str, payload):
        """On process 0: run `op` on every process; returns this process's result."""
        message = self._share({"op": op, "payload": payload})
        return self.handlers[message["op"]](message["payload"])

    def stop(self, error: str | None = None) -> None:
        if self.multi:
            self._share({"op": STOP, "payload": error})

    def serve(self) -> None:
        """On the other processes: run what process 0 asks until it stops; its error is raised here too."""
        while True:
            message = self._share(None)
            if message["op"] == STOP:
                if message["payload"]:
                    raise UserError(message["payload"])
                return
            self.handlers[message["op"]](message["payload"])
