"""A tokenizing worker process of `prepare` (started by photon_jax.data.preparation.worker_pool, never imported by it).

    python -m photon_jax.data.preparation.unit_worker PARENT_PID

Reads tasks from stdin, one line each (base64 of a pickled (function name, args)), runs
photon_jax.data.preparation.unit_writer.<function>(*args) and answers one line on the protocol channel:
("ok", result) or ("error", exception). It is a fresh interpreter running this module: the
caller's script is never re-imported, so `prepare(..., workers > 1)` needs no `__main__` guard.

It never outlives its parent: the kernel kills it when the parent dies (PR_SET_PDEATHSIG, Linux),
and a watchdog thread checks the parent pid where that is unavailable. Ctrl-C reaches it with the
rest of the process group: it exits quietly (the parent reports the interruption).
"""

from __future__ import annotations

import base64
import ctypes
import os
import pickle
import signal
import sys
import threading
import time

from photon_jax.data.preparation import unit_writer


def _die_with_parent(parent: int) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watch():
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(1.0)

    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


def encode(value) -> bytes:
    return base64.b64encode(pickle.dumps(value)) + b"\n"


def decode(line: bytes):
    return pickle.loads(base64.b64decode(line))


def main() -> int:
    _die_with_parent(int(sys.argv[1]))
    channel = os.fdopen(os.dup(1), "wb")  # the protocol; anything a library prints goes to stderr
    os.dup2(2, 1)
    for line in sys.stdin.buffer:
        name, args = decode(line)
        try:
            answer = ("ok", getattr(unit_writer, name)(*args))
        except Exception as e:  # noqa: BLE001 - handed to the parent, which raises it
            answer = ("error", e)
        try:
            channel.write(encode(answer))
        except pickle.PicklingError:
            channel.write(encode(("error", RuntimeError(f"{type(answer[1]).__name__}: {answer[1]}"))))
        channel.flush()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C to the process group: the parent prints the one line
        os._exit(130)
