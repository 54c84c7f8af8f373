"""The SLURM launcher for real: a one-machine cluster (Debian's slurm-wlm, scripts/slurm_local.sh) runs
launch/slurm_gpu.sbatch (CPU variant: 2 tasks x 4 host devices); scripts/slurm_check.py checks that its
losses equal one process x 8 devices, that a task killed mid-run ends the job, and that resubmitting
resumes. The daemons and `apt-get install` need root: elsewhere this test is skipped (CI runs as root)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="a local SLURM cluster needs root (its daemons and apt-get)")
def test_sbatch_matches_one_process_a_killed_task_ends_the_job_and_a_rerun_resumes(tmp_path):
    env = dict(os.environ, SLURM_LOCAL=str(tmp_path / "cluster"))
    subprocess.run(["bash", "scripts/slurm_local.sh", "start"], cwd=REPO, env=env, check=True, timeout=900)
    try:
        out = tmp_path / "check.json"
        proc = subprocess.run([sys.executable, "scripts/slurm_check.py", "--json-file", str(out)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=1500)
        assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
        result = json.loads(out.read_text())
    finally:
        subprocess.run(["bash", "scripts/slurm_local.sh", "stop"], cwd=REPO, env=env, timeout=60)
    assert result["losses_equal"], result
    assert result["job_state"] == "FAILED" and result["job_end_after_kill_s"] < 60, result
    assert result["resumed_from"] is not None and result["resumed_from"] >= 4, result
    assert proc.returncode == 0
