"""Devices of an accelerator we do not have, for deviceless ahead-of-time compilation (docs/aot.md).

    devices_for("v5e:4x4")  -> 16 TPU v5e devices, compiled for by libtpu
    devices_for("h100:64")  -> 64 H100s (8 per node), compiled for by XLA's CUDA plugin and ptxas

A TPU name is libtpu's own (GEN:AxB[xC]: v4, v5e, v5p, v6e; libtpu checks that the shape is one it
builds). A GPU name is ours: the device and how many, 8 per host as on a real node; no GPU wheel ships a
description of the device, so we write XLA's target config from hardware.py's figures. The compilers
live in .venv-aot (scripts/setup_aot.sh), never in .venv: a plain run must not start their backends.
jax must run on CPU for the GPU path (with the CUDA plugin active and no driver, jax cannot describe a
CUDA topology), so the CLI turns jax's platforms to cpu before anything starts a backend.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import re
from pathlib import Path

import jax

from photon_jax.errors import UserError
from photon_jax.scaleout.hardware import BY_NAME, DeviceFacts

TPU_NAME = re.compile(r"^(v4|v5e|v5p|v6e):(\d+x\d+(?:x\d+)?)$")
GPU_NAME = re.compile(r"^(h100|h200|a100):(\d+)$")
VALID_FORMS = ("a TPU slice GEN:AxB[xC] with GEN one of v4, v5e, v5p, v6e (e.g. v5e:4x4, v5e:16x16, v5p:2x2x2), "
               "or GPUs NAME:N with NAME one of h100, h200, a100 and N up to 8 or a multiple of 8 (e.g. h100:8)")
SETUP_HINT = "install the compilers with bash scripts/setup_aot.sh and run .venv-aot/bin/photon-jax"

# Hardware facts a GPU target config needs beyond hardware.py: streaming multiprocessors, shared memory
# per block (opt-in maximum) and per SM, L2, boost clock, compute capability (NVIDIA's datasheets and the
# CUDA programming guide's per-architecture limits).
_GPU_CORES = {
    "h100": dict(cores=132, smem_block=232448, smem_core=233472, l2=50 * 2**20, clock_ghz=1.98, cc=(9, 0),
                 description="NVIDIA H100 80GB HBM3"),
    "h200": dict(cores=132, smem_block=232448, smem_core=233472, l2=50 * 2**20, clock_ghz=1.98, cc=(9, 0),
                 description="NVIDIA H200"),
    "a100": dict(cores=108, smem_block=166912, smem_core=167936, l2=40 * 2**20, clock_ghz=1.41, cc=(8, 0),
                 description="NVIDIA A100-SXM4-80GB"),
}


# Compiler options a deviceless compile needs. XLA's Triton GEMM emitter picks its tiles by autotuning on
# the device; without one it fails on some shapes of the 600M step ("Couldn't find output tile sizes that
# satisfy hlo: %dot = bf16[20480,1664] dot(...)"), so GEMMs go to cuBLAS, as they may on a device too.
DEVICELESS_OPTIONS = {"gpu": {"xla_gpu_enable_triton_gemm": False}, "tpu": {}}


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str           # as given: "v5e:4x4", "h100:8"
    facts: DeviceFacts | None  # the device's figures (None for a TPU generation without a hardware.py row)
    devices: tuple      # jax devices of the topology (not addressable: compile only)
    hosts: int

    @property
    def platform(self) -> str:
        return "gpu" if self.devices[0].platform in ("gpu", "cuda") else self.devices[0].platform


def parse(name: str) -> tuple[str, str, str]:
    """("tpu" | "gpu", generation, shape or count), or a one-line UserError naming the valid forms."""
    name = (name or "").strip().lower()
    if m := TPU_NAME.match(name):
        return "tpu", m.group(1), m.group(2)
    if m := GPU_NAME.match(name):
        count = int(m.group(2))
        if count < 1 or (count > 8 and count % 8):
            raise UserError(f"topology {name!r}: a GPU count must be 1-8 or a multiple of 8 (8 per node)")
        return "gpu", m.group(1), m.group(2)
    raise UserError(f"unknown topology {name!r}: use {VALID_FORMS}")


def gpu_target_config(gen: str) -> str:
    """XLA's GpuTargetConfigProto, in text form, for one of our GPU names."""
    facts, core = BY_NAME[gen], _GPU_CORES[gen]
    major, minor = core["cc"]
    return "\n".join([
        "gpu_device_info {",
        "  threads_per_block_limit: 1024", "  threads_per_warp: 32", "  shared_memory_per_block: 49152",
        f"  shared_memory_per_core: {core['smem_core']}", "  threads_per_core_limit: 2048",
        f"  core_count: {core['cores']}", "  fpus_per_core: 128",
        "  block_dim_limit_x: 2147483647", "  block_dim_limit_y: 65535", "  block_dim_limit_z: 65535",
        f"  memory_bandwidth: {int(facts.hbm_bytes_per_s)}", f"  l2_cache_size: {core['l2']}",
        f"  clock_rate_ghz: {core['clock_ghz']}", f"  device_memory_size: {facts.memory_bytes}",
        f"  shared_memory_per_block_optin: {core['smem_block']}",
        f"  cuda_compute_capability {{ major: {major} minor: {minor} }}",
        "  registers_per_core_limit: 65536", "  registers_per_block_limit: 65536",
        "}",
        'platform_name: "CUDA"',
        "dnn_version_info { major: 9 minor: 8 }",
        "runtime_version { major: 12 minor: 8 }",
        f'device_description_str: "{core["description"]}"',
    ]) + "\n"


def _require(module: str, what: str) -> None:
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing too
        found = False
    if not found:
        raise UserError(f"the {what} is not installed in this environment: {SETUP_HINT}")


def put_ptxas_on_path() -> None:
    """Mosaic GPU runs the first ptxas on PATH (then /usr/local/cuda), not the pip wheel's: put the
    wheel's first, so the compiler matches the plugin."""
    spec = importlib.util.find_spec("nvidia.cuda_nvcc")
    for root in (spec.submodule_search_locations or []) if spec else []:
        bin_dir = Path(root) / "bin"
        if (bin_dir / "ptxas").exists() and str(bin_dir) not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")])
            return


def use_cpu_backend() -> None:
    """Before any backend starts: jax on CPU only (the accelerators are described, never opened). No
    persistent compilation cache: a deviceless executable cannot be read back (there is no client to load
    it), so writing one (the test suite sets a cache) only fills the folder."""
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_enable_compilation_cache", False)


def _compile_only_libtpu() -> None:
    """libtpu would take a machine-wide lock meant for real chips (a second compiling process would then
    fail) and warn that it cannot find this VM's TPU workers: neither applies to a compile-only process."""
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")


@functools.lru_cache(maxsize=None)
def devices_for(name: str) -> Topology:
    """The topology's devices, from its real compiler (a UserError if that is missing or refuses)."""
    from jax.experimental import topologies

    platform, gen, shape = parse(name)
    key = f"{gen}:{shape}"
    if platform == "tpu":
        _require("libtpu", "TPU compiler (libtpu)")
        _compile_only_libtpu()
        try:
            topo = topologies.get_topology_desc(topology_name=key, platform="tpu")
        except Exception as e:  # noqa: BLE001 - libtpu says which shapes it builds
            raise UserError(f"libtpu cannot build topology {key!r}: {str(e).splitlines()[0]}") from None
        facts = BY_NAME.get(gen)
        hosts = max(1, len(topo.devices) // (facts.devices_per_host if facts else 4))
        return Topology(key, facts, tuple(topo.devices), hosts)
    _require("jax_plugins.xla_cuda12", "CUDA compiler (jax-cuda12-plugin)")
    _require("nvidia.cuda_nvcc", "CUDA assembler (nvidia-cuda-nvcc-cu12's ptxas)")
    put_ptxas_on_path()
    count = int(shape)
    per_host = min(count, 8)
    try:
        topo = topologies.get_topology_desc(platform="cuda", topology=f"1x{count // per_host}x{per_host}",
                                            target_config=gpu_target_config(gen))
    except Exception as e:  # noqa: BLE001
        hint = "" if jax.config.jax_platforms == "cpu" else f" (jax must run on CPU only: {SETUP_HINT})"
        raise UserError(f"the CUDA compiler cannot describe {key!r}: {str(e).splitlines()[0]}{hint}") from None
    return Topology(key, BY_NAME[gen], tuple(topo.devices), count // per_host)
