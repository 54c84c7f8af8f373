"""The ablations notebook runs top to bottom in smoke mode (3 training steps per run, tiny regimes)
through the real sweep, training, evaluation, agreement and TPM code, with every plot drawn."""

from __future__ import annotations

import os
from pathlib import Path

import nbclient
import nbformat
import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "experiments" / "notebooks" / "ablations.ipynb"
FAST_XLA = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
            "--xla_cpu_use_fusion_emitters=false")


@pytest.mark.slow
def test_ablations_notebook_smoke_mode(tmp_path, monkeypatch):
    monkeypatch.setenv("PHOTON_JAX_NOTEBOOK_SMOKE", "1")
    monkeypatch.setenv("PHOTON_JAX_NOTEBOOK_WORKDIR", str(tmp_path / "sweep"))
    monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")  # compile time dominates 3-step runs
    # The kernel runs on one CPU device, as on a laptop (not conftest.py's 8 fake devices, over which every
    # program was compiled and run 8-way), with XLA's cheap CPU pipeline: 40% less CPU time for the same cells.
    monkeypatch.setenv("XLA_FLAGS", FAST_XLA)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError with the failing cell's traceback
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 4  # loss curves, ppl vs TPM, chunk lengths, alpha
    text = "".join(o.get("text", "") for o in outputs)
    assert "smoke mode" in text and "perplexity (2,2) / (4,4)" in text
    for run in ("photon-tiny", "photon-tiny-c22", "photon-tiny-alpha03", "vanilla-tiny-flops"):
        assert (tmp_path / "sweep" / "runs" / run / "results.json").exists(), run
    assert os.path.getsize(tmp_path / "sweep" / "results.csv") > 0
