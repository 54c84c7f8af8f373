"""Sweeps: a grid of configs and overrides -> resumable runs -> one results table (see grid.py)."""

from photon_jax.sweep.grid import Grid, RunSpec, load_grid
from photon_jax.sweep.runner import run_sweep

__all__ = ["Grid", "RunSpec", "load_grid", "run_sweep"]
