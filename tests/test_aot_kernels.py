"""The Pallas kernels compiled by the real compilers, deviceless (issue #40): every case of
photon_jax.scaleout.kernel_aot for TPU v5e, TPU v6e and an H100, each holding the kernel's custom call
(Mosaic's tpu_custom_call, Triton's __gpu$xla.gpu.triton), not an XLA fallback.

The compilers live in .venv-aot (bash scripts/setup_aot.sh; scripts/test.sh runs it), never in .venv, so
each topology compiles in one .venv-aot subprocess (JAX on CPU only), shared by its tests.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from photon_jax.scaleout.kernel_aot import CASES, KERNEL_TARGETS

ROOT = Path(__file__).resolve().parents[1]
AOT_PYTHON = ROOT / ".venv-aot" / "bin" / "python"
TOPOLOGIES = {"v5e:2x2": "tpu", "v6e:2x2": "tpu", "h100:1": "gpu"}  # a second TPU generation: v6e
TIMEOUT_S = 600  # a whole topology: about 25 s (H100) to 70 s (a TPU) on a loaded 2-core machine
CONTROL = "decode_d64_xla_control"

pytestmark = pytest.mark.slow  # about 160 s of CPU (nearly all of it in the compilers) on a loaded 2-core machine


def run_kernel_aot(topology: str) -> tuple[int, list[dict]]:
    if not AOT_PYTHON.exists():
        pytest.fail(f"{AOT_PYTHON.relative_to(ROOT)} is missing: the accelerator compilers are not installed; "
                    "run bash scripts/setup_aot.sh (scripts/test.sh does)")
    proc = subprocess.run([str(AOT_PYTHON), "-m", "photon_jax.scaleout.kernel_aot", "--topology", topology, "--json"],
                          cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    # 0: every case ok; 1: some case failed (its test says which and why); anything else: no results
    assert proc.returncode in (0, 1), \
        f"kernel_aot --topology {topology} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc.returncode, json.loads(proc.stdout)


@pytest.fixture(scope="module")
def compiled():
    """topology -> (exit code, {case name: result}), each topology compiled once, on first use."""
    runs = {}

    def get(topology):
        if topology not in runs:
            rc, results = run_kernel_aot(topology)
            runs[topology] = rc, {r["name"]: r for r in results}
        return runs[topology]

    return get


def check_kernel(result: dict, platform: str) -> None:
    """The case compiled and its program launches the kernel (at least as often as the case expects)."""
    assert result["ok"], f"{result['name']}: {result.get('error')}"
    kernel_calls = [t for t in result["custom_calls"] if t in KERNEL_TARGETS[platform]]
    assert kernel_calls and result["kernel_calls"] >= max(1, result["kernel_calls_expected"]), \
        f"{result['name']}: no kernel custom call ({result['kernel_calls']}) among {result['custom_calls']}"


KERNEL_CASES = [pytest.param(topo, case.name, id=f"{topo}-{case.name}") for topo, platform in TOPOLOGIES.items()
                for case in CASES if platform in case.platforms and case.kernel_calls_expected]


@pytest.mark.parametrize("topology,case", KERNEL_CASES)
def test_case_compiles_through_the_kernel(compiled, topology, case):
    _, results = compiled(topology)
    check_kernel(results[case], TOPOLOGIES[topology])


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_xla_control_has_no_kernel_and_fails_the_check(compiled, topology):
    """The negative: decode attention with impl="xla" compiles to plain XLA code, and check_kernel rejects
    it (so a kernel case that fell back to XLA would fail), and the exit code agrees with the cases."""
    rc, results = compiled(topology)
    control = results[CONTROL]
    assert control["ok"] and control["kernel_calls"] == 0, control
    assert not set(control["custom_calls"]) & set(KERNEL_TARGETS[TOPOLOGIES[topology]]), control
    with pytest.raises(AssertionError, match="no kernel custom call"):
        check_kernel(control, TOPOLOGIES[topology])
    assert rc == (0 if all(r["ok"] for r in results.values()) else 1)
