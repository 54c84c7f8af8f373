"""SIGTERM (preemption) during training: a flag the loop reads at every step boundary. With several
processes all must stop at the same step (the checkpoint save and the next step are collective), so
they share their flags there."""

from __future__ import annotations

import signal
import threading

import numpy as np
from jax.experimental import multihost_utils


class StopFlag:
    """Set by SIGTERM; the loop checkpoints and returns at the next step boundary."""

    def __init__(self):
        self.reason = None
        self._previous = {}

    def install(self) -> "StopFlag":
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in (signal.SIGTERM,):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.reason = signal.Signals(signum).name

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def agreed(self, processes: int) -> bool:
        """Whether to stop now (collective when processes > 1: every process must call it)."""
        if processes == 1:
            return self.reason is not None
        flags = multihost_utils.process_allgather(np.int32(self.reason is not None))
        if np.any(flags) and self.reason is None:
            self.reason = "SIGTERM (on another process)"
        return bool(np.any(flags))
