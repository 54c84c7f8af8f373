"""SIGTERM / Ctrl-C during `prepare`: stop at once, keep the finished work units, say so in one line.

Inside `stop_on_signals()` SIGTERM raises `Stopped` in the main thread and Ctrl-C `Interrupted` (still a
KeyboardInterrupt), so the worker pool's cleanup stops the workers on the
way out; prepare fills in what it kept. Both derive from BaseException: no `except Exception` on the
way swallows them. The caller's own SIGTERM handler is restored afterwards.
"""

from __future__ import annotations

import contextlib
import signal
import threading


class Stopped(BaseException):
    exit_code = 0  # SIGTERM: an orderly stop (a preempted job), as in training

    def __init__(self, signal_name: str, kept: str = "nothing was kept"):
        super().__init__(signal_name)
        self.signal_name, self.kept = signal_name, kept

    def line(self) -> str:
        return f"prepare stopped by {self.signal_name}: {self.kept}; rerun the same command to resume"


class Interrupted(Stopped, KeyboardInterrupt):
    exit_code = 130


def _raise_stopped(signum, frame):
    raise Stopped("SIGTERM")


def _raise_interrupted(signum, frame):
    raise Interrupted("SIGINT")


@contextlib.contextmanager
def stop_on_signals():
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, _raise_stopped)}
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where the caller ignores Ctrl-C
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, _raise_interrupted)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
