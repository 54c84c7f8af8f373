"""The worker processes of `prepare`: fresh interpreters (preparation.unit_worker) fed one task at a time.

Not multiprocessing: its spawned children re-import the caller's script (which then needs an
`if __name__ == "__main__":` guard), and a parent killed by a signal left its workers and the resource
tracker running. Here a worker imports only this package, dies with its parent (unit_worker.py), and
is stopped (SIGTERM, then SIGKILL) whenever `run` ends early: an error, a signal, Ctrl-C.
"""

from __future__ import annotations

import collections
import os
import selectors
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterable

from photon_jax.data.preparation.stop import Interrupted
from photon_jax.data.preparation.unit_worker import decode, encode
from photon_jax.errors import UserError

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # importable in the worker without an install
_STOP_GRACE_SECONDS = 5.0


def _start(workers: int) -> list[subprocess.Popen]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "photon_jax.data.preparation.unit_worker", str(os.getpid())]
    return [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env) for _ in range(workers)]


def _stop(procs: list[subprocess.Popen], clean: bool) -> None:
    for proc in procs:
        try:
            proc.stdin.close()  # a worker between tasks exits on end of input
        except OSError:
            pass
        if not clean and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=_STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def _died(proc: subprocess.Popen) -> BaseException:
    code = proc.wait()
    if code in (130, -signal.SIGINT):  # Ctrl-C reached the worker first
        return Interrupted("SIGINT")
    how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
    return UserError(f"a prepare worker process died ({how}; out of memory?); rerun to resume from the finished "
                     f"work units")


def run_tasks(function: str, tasks: Iterable[tuple], workers: int, on_result: Callable[[object], None]) -> None:
    """photon_jax.data.preparation.unit_writer.<function>(*task) for every task on `workers` processes; on_result gets
    each result as it arrives (any order). A task's exception is raised here; the workers are stopped."""
    pending = collections.deque(tasks)
    procs = _start(max(1, min(workers, len(pending))))
    clean = False
    selector = selectors.DefaultSelector()
    try:
        for proc in procs:
            if pending:
                proc.stdin.write(encode((function, pending.popleft())))
                proc.stdin.flush()
                selector.register(proc.stdout, selectors.EVENT_READ, proc)
        while selector.get_map():
            for key, _ in selector.select():
                proc = key.data
                line = proc.stdout.readline()
                if not line:
                    raise _died(proc)
                status, value = decode(line)
                if status == "error":
                    raise value
                on_result(value)
                if pending:
                    proc.stdin.write(encode((function, pending.popleft())))
                    proc.stdin.flush()
                else:
                    selector.unregister(proc.stdout)
        clean = True
    finally:
        selector.close()
        _stop(procs, clean)
