"""Joining a multi-process JAX run (multi-host GPU, TPU pod, or several CPU processes on one machine).

Every process runs the same command. `initialize` must run before JAX creates its
backends (before the first jax.devices() or computation); the CLI calls it first
thing in `train` and `eval`. Where the process learns who it is, in order:

1. explicit values: --coordinator HOST:PORT --num-processes N --process-id I
   (or the environment PHOTON_COORDINATOR / PHOTON_NUM_PROCESSES / PHOTON_PROCESS_ID,
   which is what launch/local.py sets);
2. SLURM: a step with more than one task (SLURM_NTASKS > 1) lets JAX read the SLURM
   variables (one process per task; JAX gives each task the GPU of its SLURM_LOCALID);
3. --distributed jax (or PHOTON_DISTRIBUTED=jax): jax.distributed.initialize() with no
   arguments, which detects Cloud TPU pods (and SLURM / Open MPI) by itself;
4. otherwise a single process: nothing to do.

CPU processes exchange data through gloo collectives; PHOTON_CPU_DEVICES=K (or
--cpu-devices K) gives a process K fake CPU devices, like
XLA_FLAGS=--xla_force_host_platform_device_count=K.

Only process 0 writes logs, progress bars, metrics, config.json and summary.json
(photon_jax.train.loop checks `jax.process_index() == 0`); orbax coordinates the
checkpoint writes of all processes itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Mapping

from photon_jax.errors import UserError

ENV_COORDINATOR = "PHOTON_COORDINATOR"
ENV_NUM_PROCESSES = "PHOTON_NUM_PROCESSES"
ENV_PROCESS_ID = "PHOTON_PROCESS_ID"
ENV_MODE = "PHOTON_DISTRIBUTED"
ENV_CPU_DEVICES = "PHOTON_CPU_DEVICES"
# Seconds without a heartbeat after which the coordination service declares a process dead; the
# survivors then exit non-zero instead of waiting in a collective until the scheduler's time limit.
ENV_HEARTBEAT = "PHOTON_HEARTBEAT_TIMEOUT"
DEFAULT_HEARTBEAT_S = 60
MODES = ("auto", "jax", "off")


@dataclasses.dataclass(frozen=True)
class Plan:
    """How this process joins the run. method: none | explicit | slurm | jax."""

    method: str
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    cpu_devices: int | None = None


def _int(value, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be an integer, got {value!r}") from None


def _check_coordinator(address: str) -> str:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"coordinator address {address!r} must be HOST:PORT (e.g. 10.0.0.1:8476)")
    return address


def resolve(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
            mode: str | None = None, cpu_devices: int | None = None,
            environ: Mapping[str, str] | None = None) -> Plan:
    """Decide how to join (a pure function of the arguments and the environment)."""
    env = os.environ if environ is None else environ
    mode = mode or env.get(ENV_MODE) or "auto"
    if mode not in MODES:
        raise UserError(f"distributed mode {mode!r} must be one of {', '.join(MODES)}")
    cpu_devices = cpu_devices if cpu_devices is not None else _int(env.get(ENV_CPU_DEVICES), ENV_CPU_DEVICES)
    if cpu_devices is not None and cpu_devices < 1:
        raise UserError(f"CPU device count must be >= 1, got {cpu_devices}")
    if mode == "off":
        return Plan("none", cpu_devices=cpu_devices)
    coordinator = coordinator or env.get(ENV_COORDINATOR) or None
    num_processes = num_processes if num_processes is not None else _int(env.get(ENV_NUM_PROCESSES),
                                                                         ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _int(env.get(ENV_PROCESS_ID), ENV_PROCESS_ID)
    given = {"coordinator": coordinator, "number of processes": num_processes, "process id": process_id}
    if any(v is not None for v in given.values()):
        missing = [k for k, v in given.items() if v is None]
        if missing:
            raise UserError(f"multi-process run needs a coordinator, a number of processes and a process id; "
                            f"missing: {', '.join(missing)} (flags --coordinator/--num-processes/--process-id "
                            f"or {ENV_COORDINATOR}/{ENV_NUM_PROCESSES}/{ENV_PROCESS_ID})")
        _check_coordinator(coordinator)
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise UserError(f"process id {process_id} is not in [0, {num_processes})")
        if num_processes == 1:
            return Plan("none", cpu_devices=cpu_devices)
        return Plan("explicit", coordinator, num_processes, process_id, cpu_devices)
    if mode == "jax":
        return Plan("jax", cpu_devices=cpu_devices)
    tasks = _int(env.get("SLURM_NTASKS"), "SLURM_NTASKS")
    if "SLURM_JOB_ID" in env and "SLURM_PROCID" in env and tasks is not None and tasks > 1:
        return Plan("slurm", cpu_devices=cpu_devices)
    return Plan("none", cpu_devices=cpu_devices)


def _configure_cpu(plan: Plan) -> None:
    import jax

    # gloo is the default in jax 0.10 but say so: CPU processes need cross-process collectives.
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except (AttributeError, ValueError):  # an option that moved in another jax version
        pass
    if plan.cpu_devices is not None:
        try:
            jax.config.update("jax_num_cpu_devices", plan.cpu_devices)
        except Exception as e:  # the backend already exists
            raise UserError(f"cannot set {plan.cpu_devices} CPU devices: {str(e).splitlines()[0]}") from None


def initialize(plan: Plan | None = None, timeout_s: int = 300) -> Plan:
    """Join the run described by `plan` (default: resolve() from the environment). Idempotent."""
    import jax

    plan = plan or resolve()
    if plan.method == "none":
        if plan.cpu_devices is not None:
            _configure_cpu(plan)
        return plan
    if jax.distributed.is_initialized():
        return plan
    _configure_cpu(plan)
    heartbeat = _int(os.environ.get(ENV_HEARTBEAT), ENV_HEARTBEAT) or DEFAULT_HEARTBEAT_S
    if heartbeat < 1:
        raise UserError(f"{ENV_HEARTBEAT} must be >= 1 second, got {heartbeat}")
    timeouts = {"initialization_timeout": timeout_s, "heartbeat_timeout_seconds": heartbeat}
    try:
        if plan.method == "explicit":
            jax.distributed.initialize(plan.coordinator, plan.num_processes, plan.process_id, **timeouts)
        elif plan.method == "slurm":
            jax.distributed.initialize(cluster_detection_method="slurm", **timeouts)
        else:
            jax.distributed.initialize(**timeouts)
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot join the distributed run ({plan.method}"
                        f"{', coordinator ' + plan.coordinator if plan.coordinator else ''}): {first[:300]}") from None
    return plan


def is_main_process() -> bool:
    import jax

    return jax.process_index() == 0


def describe() -> str:
    import jax

    return (f"process {jax.process_index()}/{jax.process_count()}, {jax.local_device_count()} local of "
            f"{jax.device_count()} {jax.devices()[0].platform} devices")


# ----------------------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("multi-process (default: from PHOTON_* / SLURM environment, else one process)")
    g.add_argument("--coordinator", default=None, metavar="HOST:PORT", help="address of process 0")
    g.add_argument("--num-processes", type=int, default=None, help="total number of processes")
    g.add_argument("--process-id", type=int, default=None, help="this process's index in [0, N)")
    g.add_argument("--distributed", default=None, choices=MODES,
                   help="auto: flags, PHOTON_* env or SLURM; jax: jax.distributed.initialize() with no "
                        "arguments (TPU pods); off: single process")
    g.add_argument("--cpu-devices", type=int, default=None, help="fake CPU devices for this process")


def initialize_from_args(args: argparse.Namespace) -> Plan:
    return initialize(resolve(args.coordinator, args.num_processes, args.process_id, args.distributed,
                              args.cpu_devices))
