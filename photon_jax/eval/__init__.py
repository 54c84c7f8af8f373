"""Evaluation of trained runs: corpus metrics (metrics.py), multiple choice (choices.py), and a whole
work directory on its held-out split, a text file, another data dir or a choice file (evaluate.py)."""

from photon_jax.eval.evaluate import evaluate_run

__all__ = ["evaluate_run"]
