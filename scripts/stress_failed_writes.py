"""Stress the failed-checkpoint-write path under load: every repetition must print exactly one line
(`photon-jax: error: could not write a checkpoint ...`) and exit 2 within --max-seconds.

    .venv/bin/python scripts/stress_failed_writes.py [--repeats 20] [--busy 2] [--json out.json]

Each repetition runs the real CLI (`train`) in a child process through tests/reliability_worker.py,
which makes the save of step 4 fail: in orbax's background commit or in the synchronous mkdir, with
ENOSPC (disk full) or EROFS (read-only disk). --busy processes keep the cores busy meanwhile (the
late 'Event loop is closed' noise of issue 20 showed only under load). Exit code 0 when every
repetition passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORKER = REPO / "tests" / "reliability_worker.py"
# a busy loop that ends by itself once its parent is gone (a killed run leaves no burner behind)
BURN = "import os\nparent = os.getppid()\nwhile os.getppid() == parent: pass"
SCENARIOS = [("commit", "ENOSPC"), ("commit", "EROFS"), ("mkdir", "ENOSPC"), ("mkdir", "EROFS")]
OVERRIDES = ["model.family=vanilla", "model.vocab_size=512", "model.width=32", "model.ffn_width=64",
             "model.num_heads=4", "model.num_kv_heads=2", "model.num_layers=1", "model.dtype=float32",
             "data.seq_len=64", "train.batch_size=4", "train.steps=1000", "train.warmup_steps=2",
             "train.log_every=1", "train.eval_every=1000", "train.eval_batches=1", "train.checkpoint_every=2",
             "mesh.data=1"]


def prepare_data(root: Path) -> Path:
    from photon_jax.config import DataConfig
    from photon_jax.data.preparation.corpus import shakespeare_files
    from photon_jax.data.preparation.prepare import prepare

    corpus = root / "plays"
    corpus.mkdir()
    for path in shakespeare_files()[:3]:
        shutil.copy(path, corpus / path.name)
    prepare(DataConfig(corpus=str(corpus)), root / "data", 512)
    return root / "data"


def one_run(root: Path, data: Path, where: str, code: str, index: int) -> dict:
    run = root / f"run-{where}-{code}-{index}"
    cmd = [sys.executable, str(WORKER), "--one-device", "--cache", str(root / "cache"), "--fast-compile",
           "--fail-save-step", "4", "--fail-in", where, "--fail-errno", code, "--",
           "train", "--quiet", "--workdir", str(run), f"data.data_dir={data}", *OVERRIDES]
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    seconds = time.monotonic() - start
    lines = proc.stderr.strip().splitlines()
    ok = (proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("photon-jax: error: could not write")
          and os.strerror(getattr(__import__("errno"), code)) in lines[0])
    return {"where": where, "errno": code, "index": index, "exit": proc.returncode, "stderr_lines": len(lines),
            "seconds": round(seconds, 1), "ok": ok, "stderr_tail": "" if ok else proc.stderr[-2000:]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--busy", type=int, default=2, help="CPU-burning processes while the runs go")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="a run slower than this fails")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    root = Path(tempfile.mkdtemp(prefix="photon-stress-"))
    burners = []
    try:
        data = prepare_data(root)
        burners = [subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(args.busy)]
        results = []
        for index in range(args.repeats):
            for where, code in SCENARIOS:
                result = one_run(root, data, where, code, index)
                result["ok"] = result["ok"] and result["seconds"] <= args.max_seconds
                results.append(result)
                print(f"{where:6s} {code:6s} #{index:2d}: exit {result['exit']}, {result['stderr_lines']} stderr "
                      f"line(s), {result['seconds']:.1f} s {'ok' if result['ok'] else 'FAILED'}", flush=True)
                if not result["ok"]:
                    print(result["stderr_tail"], file=sys.stderr)
    finally:
        for proc in burners:
            proc.kill()
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)
    failed = [r for r in results if not r["ok"]]
    summary = {"runs": len(results), "failed": len(failed), "busy_processes": args.busy,
               "max_seconds": max(r["seconds"] for r in results), "results": results}
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
