r"""Run one command as N cooperating JAX processes on this machine, each with K fake CPU devices.

    python -m launch.local --processes 2 --devices-per-process 4 -- \
        photon-jax train --workdir runs/mp mesh.data=8

Every process gets the same command and the environment photon_jax.distributed reads:
PHOTON_COORDINATOR=127.0.0.1:<free port>, PHOTON_NUM_PROCESSES=N, PHOTON_PROCESS_ID=i,
JAX_PLATFORMS=cpu and XLA_FLAGS with --xla_force_host_platform_device_count=K (any other
device-count flag inherited from the caller is replaced). Processes talk through gloo.

A leading `photon-jax` runs as `<this python> -m photon_jax.cli.main` and a leading `python` as
this interpreter, so the launcher and the workers use the same environment. Output lines are
prefixed with [i] (--no-prefix to turn off; --main-only keeps only process 0's output). If any
process fails, the others are stopped (SIGTERM, then SIGKILL after --grace seconds) and the
launcher exits with the failing status.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

DEVICE_FLAG = "--xla_force_host_platform_device_count"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(base: dict, index: int, processes: int, devices: int, port: int) -> dict:
    env = dict(base)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(DEVICE_FLAG)]
    env["XLA_FLAGS"] = " ".join(flags + [f"{DEVICE_FLAG}={devices}"])
    env["JAX_PLATFORMS"] = "cpu"
    env["PHOTON_COORDINATOR"] = f"127.0.0.1:{port}"
    env["PHOTON_NUM_PROCESSES"] = str(processes)
    env["PHOTON_PROCESS_ID"] = str(index)
    env.pop("PHOTON_CPU_DEVICES", None)  # XLA_FLAGS sets the device count
    env["PYTHONUNBUFFERED"] = "1"
    return env


def resolve_command(command: list[str]) -> list[str]:
    if command and command[0] == "photon-jax":
        return [sys.executable, "-m", "photon_jax.cli.main", *command[1:]]
    if command and command[0] in ("python", "python3"):
        return [sys.executable, *command[1:]]
    return command


def _pump(stream, prefix: str, out, lock: threading.Lock) -> None:
    for line in iter(stream.readline, b""):
        with lock:
            out.write(prefix.encode() + line if prefix else line)
            out.flush()
    stream.close()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the worker's own process group (start_new_session)
    except (ProcessLookupError, PermissionError):
        pass


def stop_all(procs: list[subprocess.Popen], grace: float) -> None:
    for p in procs:
        if p.poll() is None:
            _signal_group(p, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(p, signal.SIGKILL)
            p.wait()


def launch(command: list[str], processes: int, devices: int, *, prefix: bool = True, main_only: bool = False,
           grace: float = 10.0, timeout: float | None = None, port: int | None = None) -> int:
    """Start the workers, forward their output, return 0 or the first failing exit status."""
    port = port or free_port()
    command = resolve_command(command)
    out = sys.stdout.buffer
    lock = threading.Lock()
    procs, pumps = [], []
    stopping = {"signal": None}

    def on_signal(signum, frame):
        stopping["signal"] = signum

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for i in range(processes):
            quiet = main_only and i > 0
            proc = subprocess.Popen(command, env=worker_env(os.environ, i, processes, devices, port),
                                    stdout=subprocess.DEVNULL if quiet else subprocess.PIPE,
                                    stderr=subprocess.DEVNULL if quiet else subprocess.STDOUT,
                                    start_new_session=True)
            procs.append(proc)
            if not quiet:
                tag = f"[{i}] " if prefix and processes > 1 else ""
                pump = threading.Thread(target=_pump, args=(proc.stdout, tag, out, lock), daemon=True)
                pump.start()
                pumps.append(pump)
        start = time.monotonic()
        status = 0
        while True:
            codes = [p.poll() for p in procs]
            failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                i, status = failed[0]
                sys.stderr.write(f"launch.local: process {i} exited with status {status}; stopping the others\n")
                break
            if all(c == 0 for c in codes):
                break
            if stopping["signal"] is not None:
                sys.stderr.write("launch.local: interrupted; stopping the processes\n")
                status = 128 + stopping["signal"]
                break
            if timeout is not None and time.monotonic() - start > timeout:
                sys.stderr.write(f"launch.local: timed out after {timeout:.0f} s; stopping the processes\n")
                status = 124
                break
            time.sleep(0.1)
        stop_all(procs, grace)
        for pump in pumps:
            pump.join(timeout=5)
        return status
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        stop_all(procs, 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.local", description=__doc__.split("\n\n")[0],
                                     usage="%(prog)s [options] -- COMMAND [ARGS...]")
    parser.add_argument("--processes", "-n", type=int, default=2, help="number of processes (default 2)")
    parser.add_argument("--devices-per-process", "-k", type=int, default=4, help="fake CPU devices each (default 4)")
    parser.add_argument("--port", type=int, default=None, help="coordinator port (default: a free one)")
    parser.add_argument("--no-prefix", action="store_true", help="do not prefix output lines with [i]")
    parser.add_argument("--main-only", action="store_true", help="show only process 0's output")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL")
    parser.add_argument("--timeout", type=float, default=None, help="stop everything after this many seconds")
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--" in argv:
        split = argv.index("--")
        options, command = argv[:split], argv[split + 1:]
    else:
        options, command = argv, []
    args = parser.parse_args(options)
    if not command:
        parser.error("no command given (put it after --)")
    if args.processes < 1 or args.devices_per_process < 1:
        parser.error("--processes and --devices-per-process must be >= 1")
    sys.stderr.write(f"launch.local: {args.processes} process(es) x {args.devices_per_process} CPU devices: "
                     f"{shlex.join(command)}\n")
    return launch(command, args.processes, args.devices_per_process, prefix=not args.no_prefix,
                  main_only=args.main_only, grace=args.grace, timeout=args.timeout, port=args.port)


if __name__ == "__main__":
    sys.exit(main())
