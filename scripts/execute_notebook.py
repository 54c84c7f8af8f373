"""Execute experiments/notebooks/ablations.ipynb in place (full mode unless PHOTON_JAX_NOTEBOOK_SMOKE=1)
and report its wall time; the executed outputs are what gets committed."""

import sys
import time
from pathlib import Path

import nbclient
import nbformat

path = Path(sys.argv[1] if len(sys.argv) > 1 else "experiments/notebooks/ablations.ipynb").resolve()
nb = nbformat.read(path, as_version=4)
start = time.perf_counter()
nbclient.NotebookClient(nb, timeout=1800, kernel_name="python3",
                        resources={"metadata": {"path": str(path.parent)}}).execute()
nbformat.write(nb, path)
print(f"executed {path} in {time.perf_counter() - start:.0f} s")
