"""Evaluation of trained runs: corpus metrics (metrics.py), multiple choice (choices.py), a whole work
directory on its held-out split, a text file, another data dir or a choice file (evaluate.py), and
lm-evaluation-harness tasks (tasks.py: harness.py's model class over backend.py, scoring.py and the
multi-process lockstep.py; docs/evaluation.md)."""

from photon_jax.eval.evaluate import evaluate_run

__all__ = ["evaluate_run"]
