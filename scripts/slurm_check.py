"""The SLURM launcher for real, on a one-machine cluster (scripts/slurm_local.sh):

1. `sbatch launch/slurm_gpu.sbatch` with its CPU variant (1 node, 2 tasks x 4 host devices) trains and
   its per-step losses equal one process x 8 devices on the same (8, 1, 1) mesh;
2. a task killed (SIGKILL) mid-run ends the whole job (srun --kill-on-bad-exit) instead of leaving the
   other task waiting in a collective, and
3. resubmitting the same job resumes from its last checkpoint.

    sudo bash scripts/slurm_local.sh start     # (root; installs slurm-wlm + munge when missing)
    .venv/bin/python scripts/slurm_check.py [--json-file F]

Exit code 0 when all three hold; the measurements are printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = Path(sys.prefix)  # the virtual environment running this script (the job activates it)
OVERRIDES = ["model.vocab_size=384", "model.width=32", "model.ffn_width=64", "model.dtype=float32", "data.seq_len=32",
             "train.batch_size=8", "train.log_every=1", "train.eval_batches=1", "mesh.data=8", "mesh.fsdp=1",
             "mesh.tensor=1", "train.learning_rate=1e-2", "train.warmup_steps=1"]
CPU_VARIANT = ["--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--gpus-per-node=0"]
# Compile fast: XLA's cheap CPU pipeline (the same for the 1 x 8 reference, so the same numerics), and
# a persistent compilation cache shared by the jobs (same programs, same mesh).
FAST_XLA = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
            "--xla_cpu_use_fusion_emitters=false")


def slurm_env(cache: Path) -> dict:
    conf = os.environ.get("SLURM_CONF") or str(Path(os.environ.get("SLURM_LOCAL", "/tmp/photon-slurm")) / "etc" /
                                                "slurm.conf")
    return dict(os.environ, SLURM_CONF=conf, JAX_PLATFORMS="cpu", PHOTON_CPU_DEVICES="4", VENV=str(VENV),
                PRESET="photon-tiny", PYTHONPATH=str(REPO), XLA_FLAGS=FAST_XLA, JAX_COMPILATION_CACHE_DIR=str(cache),
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")


def losses(workdir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["split"] == "train"}


def sbatch(env: dict, workdir: Path, out: Path, extra: list[str], wait: bool) -> str:
    cmd = ["sbatch", "--parsable", *CPU_VARIANT, f"--output={out}", *(["--wait"] if wait else []),
           str(REPO / "launch" / "slurm_gpu.sbatch"), *OVERRIDES, *extra]
    proc = subprocess.run(cmd, env=dict(env, WORKDIR=str(workdir)), capture_output=True, text=True, cwd=workdir.parent)
    if wait and proc.returncode != 0:
        raise SystemExit(f"job failed ({proc.returncode}): {proc.stderr.strip()}\n{out.read_text()[-3000:]}")
    return proc.stdout.strip().split(";")[0]


def job_pids(env: dict, job: str) -> dict[int, int]:
    """Global task id -> pid of the task's process (scontrol listpids)."""
    out = subprocess.run(["scontrol", "listpids", job], env=env, capture_output=True, text=True).stdout
    pids = {}
    for line in out.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 5 and parts[4].isdigit():
            pids.setdefault(int(parts[4]), int(parts[0]))
    return pids


def job_running(env: dict, job: str) -> bool:
    return bool(subprocess.run(["squeue", "-h", "-j", job], env=env, capture_output=True, text=True).stdout.strip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json-file", default=None)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="photon-slurm-check-"))
    env = slurm_env(root / "jax-cache")
    result = {}
    try:
        plays = root / "plays"
        plays.mkdir()
        corpus = subprocess.run([sys.executable, "-c", "from photon_jax.data.preparation.corpus import "
                                 "shakespeare_files;"
                                 "print('\\n'.join(map(str, shakespeare_files()[:2])))"],
                                capture_output=True, text=True, check=True).stdout.split()
        for path in corpus:
            shutil.copy(path, plays / Path(path).name)
        data = root / "data"
        subprocess.run([sys.executable, "-m", "photon_jax.cli.main", "prepare", "--corpus", str(plays), "--out",
                        str(data), "--vocab-size", "384"], check=True, capture_output=True)
        common = [f"data.data_dir={data}"]

        # 1. the sbatch script's CPU variant matches one process x 8 devices
        single = root / "single"
        subprocess.run([sys.executable, "-m", "photon_jax.cli.main", "train", "--quiet", "--preset", "photon-tiny",
                        "--workdir", str(single), *OVERRIDES, *common, "train.steps=4", "--cpu-devices", "8"],
                       check=True, capture_output=True, env=dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=FAST_XLA))
        start = time.monotonic()
        sbatch(env, root / "slurm", root / "job1.out", common + ["train.steps=4"], wait=True)
        result["job_seconds"] = round(time.monotonic() - start, 1)
        a, b = losses(single), losses(root / "slurm")
        result["losses_1x8"], result["losses_slurm_2x4"] = a, b
        result["losses_equal"] = a.keys() == b.keys() and all(abs(a[s] - b[s]) <= 1e-5 * abs(a[s]) for s in a)

        # 2. a killed task ends the job
        workdir = root / "killed"
        job = sbatch(env, workdir, root / "job2.out", common + ["train.steps=100000", "train.checkpoint_every=2",
                                                                "train.eval_every=100000"], wait=False)
        deadline = time.monotonic() + 400
        while not ((workdir / "metrics.jsonl").exists() and max(losses(workdir), default=0) >= 5):
            if time.monotonic() > deadline or not job_running(env, job):
                raise SystemExit(f"job {job} did not reach step 5:\n{(root / 'job2.out').read_text()[-3000:]}")
            time.sleep(1)
        pids = job_pids(env, job)
        os.kill(pids[1], signal.SIGKILL)
        killed = time.monotonic()
        while job_running(env, job):
            if time.monotonic() - killed > 120:
                raise SystemExit(f"job {job} still running 120 s after a task was killed")
            time.sleep(0.5)
        result["job_end_after_kill_s"] = round(time.monotonic() - killed, 1)
        state = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True).stdout
        result["job_state"] = next((w.split("=")[1] for w in state.split() if w.startswith("JobState=")), "gone")
        saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())

        # 3. resubmitting resumes from the last checkpoint
        last = max(saved)
        sbatch(env, workdir, root / "job3.out", common + [f"train.steps={last + 2}"], wait=True)
        output = (root / "job3.out").read_text()
        result["resumed_from"] = last if f"resumed from step {last}" in output else None
        result["ok"] = bool(result["losses_equal"] and result["job_state"] in ("FAILED", "CANCELLED", "gone")
                            and result["resumed_from"] == last)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json_file:
        Path(args.json_file).write_text(text)
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
