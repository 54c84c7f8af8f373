"""matplotlib for every figure the project writes (bench, sweep, experiments): the Agg backend unless one
was chosen, so no display is needed and a notebook keeps its inline backend; `save_figure` writes a PNG or
fails in one line."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

if not os.environ.get("MPLBACKEND"):  # Jupyter kernels set it to their inline backend
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from photon_jax.errors import UserError  # noqa: E402


def save_figure(fig, path: str) -> None:
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror}") from None
    finally:
        plt.close(fig)
