"""photon_jax/host_allocator.py: with the settings, a jitted program's large temporary buffer stays
mapped from one run to the next (no page faults after the first run); with glibc's defaults every run
faults it in again. Measured in fresh processes through the real XLA:CPU executable."""

import json
import os
import subprocess
import sys

import pytest

from photon_jax import host_allocator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBE = """
import json, resource, time
from photon_jax import host_allocator
applied = host_allocator.configure()
import jax, jax.numpy as jnp
a = jnp.ones((6144, 32))
# A training-step-shaped program: the state is donated and updated, a 144 MiB temporary in between.
step = jax.jit(lambda a: a + 1e-6 * jnp.tanh(a @ a.T)[:, :32] + 1e-6 * jnp.mean(a @ a.T), donate_argnums=0)
temp = step.lower(a).compile().memory_analysis().temp_size_in_bytes
faults = []
for _ in range(10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = step(a)
    a.block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    time.sleep(0.05)  # the host work between two training steps
print(json.dumps({"applied": applied, "state": host_allocator.state(), "temp_pages": temp // 4096,
                  "faults": faults}))
"""


CLI_PROBE = """
import contextlib, io, json, sys
from photon_jax.cli.main import main
with contextlib.redirect_stdout(io.StringIO()):
    rc = main(sys.argv[1:])
from photon_jax import host_allocator
print(json.dumps({"rc": rc, "state": host_allocator.state()}))
"""


def probe(script=PROBE, *argv, **env) -> dict:
    full_env = {k: v for k, v in os.environ.items() if k != "PHOTON_HOST_ALLOCATOR"}
    full_env.update(JAX_PLATFORMS="cpu", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), **env)
    out = subprocess.run([sys.executable, "-c", script, *argv], env=full_env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(host_allocator._glibc() is None, reason="glibc's malloc is what is configured")
def test_the_temporary_buffer_stays_mapped_between_runs_only_with_the_settings():
    tuned, default = probe(), probe(PHOTON_HOST_ALLOCATOR="system")
    assert tuned["applied"] == tuned["state"] == "one arena, no mmap, trim above 2 GiB"
    assert default["state"] == "glibc defaults" and "PHOTON_HOST_ALLOCATOR=system" in default["applied"]
    pages = tuned["temp_pages"]
    assert pages > 30000
    # glibc's defaults map the buffer afresh on every run; with the settings the heap keeps it (a run
    # that finds the previous run's buffer still held faults in one more region, once).
    def refaulted_runs(probed):
        return sum(f > pages // 2 for f in probed["faults"][1:])
    assert refaulted_runs(default) == 9, default
    assert refaulted_runs(tuned) <= 2, tuned


def test_runs_on_cpu_follows_jax_platforms():
    assert host_allocator.runs_on_cpu({"JAX_PLATFORMS": "cpu"})
    assert host_allocator.runs_on_cpu({"JAX_PLATFORMS": " cpu,cuda"})
    assert not host_allocator.runs_on_cpu({"JAX_PLATFORMS": "cuda,cpu"})
    assert not host_allocator.runs_on_cpu({"JAX_PLATFORMS": "tpu"})


@pytest.mark.skipif(host_allocator._glibc() is None, reason="glibc's malloc is what is configured")
def test_configure_leaves_a_started_backend_alone():
    """Once the CPU backend's threads hold their own arenas the settings would only half apply."""
    late = probe("import json, jax; jax.devices(); from photon_jax import host_allocator; "
                 "print(json.dumps({'applied': host_allocator.configure(), 'state': host_allocator.state()}))")
    assert late == {"applied": "left alone (the JAX CPU backend already started its threads)",
                    "state": "glibc defaults"}


@pytest.mark.skipif(host_allocator._glibc() is None, reason="glibc's malloc is what is configured")
def test_the_cli_applies_the_settings_to_train_step_loops_only(tmp_path):
    """`train` (here its dry run: the step compiled for the mesh) runs with them; a command that does
    not train, with glibc's defaults. Which commands opt in is each parser's `host_allocator` default."""
    trained = probe(CLI_PROBE, "train", "--preset", "vanilla-tiny", "--dry-run", "model.num_layers=1")
    listed = probe(CLI_PROBE, "params", "--preset", "vanilla-tiny", "--json")
    assert trained == {"rc": 0, "state": "one arena, no mmap, trim above 2 GiB"}
    assert listed == {"rc": 0, "state": "glibc defaults"}
    from photon_jax.cli.main import build_parser
    commands = (["train"], ["run"], ["bench", "train"], ["bench", "tpm"],
                ["generate", "--workdir", "w", "--prompt", "p"], ["eval", "--workdir", "w"], ["sweep", "x"])
    opted_in = {argv[0] if argv[0] != "bench" else " ".join(argv) for argv in commands
                if getattr(build_parser().parse_args(argv), "host_allocator", False)}
    assert opted_in == {"train", "run", "bench train"}
