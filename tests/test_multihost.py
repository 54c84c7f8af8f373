"""Multi-process training and cross-mesh evaluation, through the local launcher (launch/local.py).

Two processes x 4 CPU devices (gloo collectives) train, checkpoint and evaluate; they must match one
process x 8 devices. Checkpoints then load onto other meshes, one device and one process, and give
the same validation loss. Also: how each process learns its place (photon_jax.distributed.resolve),
and that the launcher stops everything when one process fails.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import prepare_few_plays, tiny_overrides

from photon_jax.cli.main import main
from photon_jax.config import MeshConfig
from photon_jax.distributed import Plan, resolve
from photon_jax.errors import UserError
from photon_jax.eval.evaluate import evaluate_run

pytestmark = pytest.mark.usefixtures("fast_compile")  # conftest.py: the in-process evaluations compile faster

REPO = Path(__file__).resolve().parent.parent
VOCAB = 384
STEPS = 4
EVAL_BATCHES = 2
# Worker processes compile with XLA's cheap CPU pipeline (same program in both runs, so same numerics).
FAST_XLA = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
            "--xla_cpu_use_fusion_emitters=false")


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """Three real plays, tokenized with a small vocabulary (prepared in about a second)."""
    return prepare_few_plays(tmp_path_factory.mktemp("multihost"), VOCAB)


def _launch(processes: int, devices: int, *command: str) -> subprocess.Popen:
    env = dict(os.environ, XLA_FLAGS=FAST_XLA)
    return subprocess.Popen([sys.executable, "-m", "launch.local", "--processes", str(processes),
                             "--devices-per-process", str(devices), "--timeout", "400", "--", *command],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _train_losses(workdir: Path) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in records if r["split"] == "train"]


@pytest.fixture(scope="module")
def runs(small_data, tmp_path_factory):
    """The same run as 1 process x 8 devices and 2 processes x 4 devices, both on the (8, 1, 1) mesh."""
    root = tmp_path_factory.mktemp("runs")
    overrides = tiny_overrides(vocab=VOCAB, chunks=(4,), seq_mult=16) + [  # one level: half the compile time
        f"data.data_dir={small_data}", "train.batch_size=8", f"train.steps={STEPS}", "train.log_every=1",
        "train.warmup_steps=1", "train.learning_rate=1e-2", f"train.eval_batches={EVAL_BATCHES}",
        "mesh.data=8", "mesh.fsdp=1", "mesh.tensor=1"]
    dirs = {1: root / "one_process", 2: root / "two_processes"}
    # the 2-process run prepares its own copy of the data: each process tokenizes every 2nd work unit
    own_data = [f"data.data_dir={root / 'two_processes_data'}", f"data.corpus={small_data.parent / 'plays'}",
                "data.prepare_unit_mb=0.1", "data.prepare_workers=1"]
    start = time.perf_counter()
    procs = {n: _launch(n, 8 // n, "photon-jax", "train", "--quiet", "--workdir", str(dirs[n]), *overrides,
                        *(own_data if n == 2 else [])) for n in (1, 2)}
    outputs = {n: p.communicate(timeout=480)[0] for n, p in procs.items()}
    for n, p in procs.items():
        assert p.returncode == 0, f"{n}-process run failed:\n{outputs[n][-3000:]}"
    print(f"1x8 and 2x4 training runs: {time.perf_counter() - start:.1f} s")
    return dirs


def test_two_processes_prepare_the_same_data(runs, small_data):
    from photon_jax.data.loading.packing import SplitSource

    prepared = runs[2].parent / "two_processes_data"
    manifests = [json.loads((d / "manifest.json").read_text()) for d in (small_data, prepared)]
    assert manifests[1]["units"] == 3 and manifests[1]["prepared_with"]["processes"] == 2
    for key in ("fingerprint", "tokenizer", "splits", "documents"):
        assert manifests[1][key] == manifests[0][key], key
    for split in ("train", "validation"):
        a, b = SplitSource(small_data, split), SplitSource(prepared, split)
        assert [a.doc(i).tobytes() for i in range(len(a))] == [b.doc(i).tobytes() for i in range(len(b))]


def test_two_processes_match_one_process(runs):
    one, two = runs[1], runs[2]
    losses_one, losses_two = _train_losses(one), _train_losses(two)
    # process 0 alone writes metrics, config and summary: one record per step, not one per process
    assert [s for s, _ in losses_two] == list(range(1, STEPS + 1))
    np.testing.assert_allclose([v for _, v in losses_two], [v for _, v in losses_one], rtol=1e-5)
    assert losses_two[-1][1] < losses_two[0][1]
    assert not list(two.glob(".write_test*"))
    summary_one = json.loads((one / "summary.json").read_text())
    summary_two = json.loads((two / "summary.json").read_text())
    assert summary_two["step"] == STEPS and (two / "config.json").is_file()
    assert (two / "checkpoints" / str(STEPS)).is_dir()
    for key in ("token_loss", "bits_per_byte", "targets", "bytes"):  # bytes are summed over both processes
        assert summary_two["validation"][key] == pytest.approx(summary_one["validation"][key], rel=1e-5), key


def _eval_cli(capsys, workdir, mesh):
    code = main(["eval", "--workdir", str(workdir), "--mesh", mesh, "--max-batches", str(EVAL_BATCHES), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def test_checkpoint_evaluates_on_any_mesh(runs, capsys, monkeypatch):
    """Saved on (8,1,1) by one process, and by two: evaluated by this one process on (1,4,2), (2,2,2)
    and a single device, the validation loss is the one the training run measured."""
    for n, workdir in runs.items():
        trained = json.loads((workdir / "summary.json").read_text())["validation"]
        mesh = "data=1,fsdp=4,tensor=2" if n == 1 else "data=2,fsdp=2,tensor=2"
        result = _eval_cli(capsys, workdir, mesh)
        assert result["run"]["mesh"] == mesh and result["run"]["step"] == STEPS
        assert result["validation"]["token_loss"] == pytest.approx(trained["token_loss"], rel=1e-5)
        assert result["validation"]["bits_per_byte"] == pytest.approx(trained["bits_per_byte"], rel=1e-5)
    monkeypatch.setattr(jax, "devices", lambda *a: jax.local_devices()[:1])
    trained = json.loads((runs[1] / "summary.json").read_text())["validation"]
    single = evaluate_run(runs[1], max_batches=EVAL_BATCHES, mesh_cfg=MeshConfig(data=1, fsdp=1, tensor=1))
    assert single["run"]["mesh"] == "data=1,fsdp=1,tensor=1"
    assert single["validation"]["token_loss"] == pytest.approx(trained["token_loss"], rel=1e-5)


@pytest.mark.parametrize("mesh, extra, message", [
    ("data=3,fsdp=1,tensor=1", [], "needs 3 devices, but 8 are available"),
    ("data=1,fsdp=1,tensor=8", [], "is not divisible by mesh axes"),  # 4 heads over 8 devices
    ("data=1,fsdp=2,tensor=4", [], "is not divisible by mesh axes"),  # 2 kv heads over 4 devices
    ("data=8,fsdp=1,tensor=1", ["--batch-size", "4"], "batch size 4 is not divisible"),
    ("data=2,fsdp=2,gpu=2", [], "expected data=N,fsdp=N,tensor=N"),
])
def test_eval_on_a_bad_mesh_is_one_line_exit_2(runs, mesh, extra, message, capsys):
    code = main(["eval", "--workdir", str(runs[2]), "--mesh", mesh, *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err


# ----------------------------------------------------------------------------- joining a run

def test_resolve_explicit_env_slurm_and_tpu():
    env = {"PHOTON_COORDINATOR": "127.0.0.1:1234", "PHOTON_NUM_PROCESSES": "2", "PHOTON_PROCESS_ID": "1"}
    assert resolve(environ=env) == Plan("explicit", "127.0.0.1:1234", 2, 1)
    assert resolve("10.0.0.1:99", 4, 3, environ=env) == Plan("explicit", "10.0.0.1:99", 4, 3)  # flags win
    assert resolve(environ={**env, "PHOTON_NUM_PROCESSES": "1", "PHOTON_PROCESS_ID": "0"}).method == "none"
    slurm = {"SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_NTASKS": "16"}
    assert resolve(environ=slurm).method == "slurm"
    assert resolve(environ={**slurm, "SLURM_NTASKS": "1"}).method == "none"
    assert resolve(environ={"PHOTON_DISTRIBUTED": "jax"}).method == "jax"  # TPU pods
    assert resolve(mode="off", environ={**env, **slurm}).method == "none"
    assert resolve(environ={"PHOTON_CPU_DEVICES": "4"}) == Plan("none", cpu_devices=4)
    assert resolve(environ={}) == Plan("none")
    for bad, message in [({"PHOTON_COORDINATOR": "127.0.0.1:1234"}, "missing: number of processes, process id"),
                         ({**env, "PHOTON_PROCESS_ID": "2"}, "not in [0, 2)"),
                         ({**env, "PHOTON_COORDINATOR": "localhost"}, "HOST:PORT"),
                         ({**env, "PHOTON_NUM_PROCESSES": "two"}, "must be an integer"),
                         ({"PHOTON_DISTRIBUTED": "mpi"}, "must be one of")]:
        with pytest.raises(UserError, match=message.replace("[", r"\[").replace(")", r"\)")):
            resolve(environ=bad)


def test_launcher_stops_the_others_when_one_fails(tmp_path):
    # workers 0 and 1 report and then hang; worker 2 fails once both have reported
    script = ("import os, sys, time, pathlib\n"
              "pid = int(os.environ['PHOTON_PROCESS_ID'])\n"
              "print('worker', pid, os.environ['PHOTON_NUM_PROCESSES'], os.environ['XLA_FLAGS'], flush=True)\n"
              f"ready = pathlib.Path({str(tmp_path)!r})\n"
              "(ready / str(pid)).touch()\n"
              "while pid == 2 and not ((ready / '0').exists() and (ready / '1').exists()):\n"
              "    time.sleep(0.05)\n"
              "sys.exit(3) if pid == 2 else time.sleep(120)\n")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "launch.local", "-n", "3", "-k", "2", "--grace", "2", "--",
                           "python", "-c", script], cwd=REPO, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 3, proc.stderr
    assert time.perf_counter() - start < 60  # not the workers' 120 s
    assert "process 2 exited with status 3" in proc.stderr
    lines = proc.stdout.splitlines()
    for i in range(3):
        line = next(x for x in lines if x.startswith(f"[{i}] worker {i} 3 "))
        assert line.endswith("--xla_force_host_platform_device_count=2")  # the caller's =8 is replaced


def test_a_hung_process_makes_the_survivor_exit_within_the_heartbeat_timeout(small_data, tmp_path):
    """Without the scheduler's help: process 1 stops responding (SIGSTOP: no crash, no closed socket)
    mid-training; JAX's coordination service misses its heartbeats for PHOTON_HEARTBEAT_TIMEOUT seconds
    and process 0 exits non-zero instead of waiting in a collective until a job time limit."""
    heartbeat, port = 5, 23000 + os.getpid() % 2000
    workdir = tmp_path / "run"
    procs = []
    for pid in range(2):
        env = dict(os.environ, XLA_FLAGS=FAST_XLA, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
                   PHOTON_COORDINATOR=f"127.0.0.1:{port}", PHOTON_NUM_PROCESSES="2", PHOTON_PROCESS_ID=str(pid),
                   PHOTON_CPU_DEVICES="2", PHOTON_HEARTBEAT_TIMEOUT=str(heartbeat))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "photon_jax.cli.main", "train", "--quiet", "--workdir", str(workdir),
             *tiny_overrides(vocab=VOCAB, chunks=(4,), seq_mult=8), f"data.data_dir={small_data}",
             "train.batch_size=4", "train.steps=100000", "train.log_every=1", "train.eval_every=100000",
             "train.checkpoint_every=100000"],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"p{pid}.log", "w")))
    try:
        metrics = workdir / "metrics.jsonl"
        deadline = time.monotonic() + 400
        while not (metrics.exists() and metrics.read_text().count("\n") >= 2):  # steps are running
            assert time.monotonic() < deadline and procs[0].poll() is None, (tmp_path / "p0.log").read_text()[-2000:]
            time.sleep(0.5)
        procs[1].send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        code = procs[0].wait(timeout=heartbeat + 60)
        waited = time.monotonic() - stopped
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert code != 0
    assert waited < heartbeat + 60  # bounded by the heartbeat timeout (measured: about the timeout itself)
    assert "another task died" in (tmp_path / "p0.log").read_text()
