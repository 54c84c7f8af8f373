"""Every generation mode scored on the same held-out windows and the same positions.

The windows are the first `count` full windows of the validation split (the ones the RecGen-vs-HierGen
agreement is measured on); in each, the first `prompt_len` tokens (default: half the window) are context
and the rest are scored. Runs that share a prepared data dir therefore score the same tokens, which
`tokens_sha256` lets a comparison check.

- Exact modes (PHOTON's and Block's HierGen, vanilla) are scored by the training forward: the model's
  teacher-forced NLL (model/losses.token_nll, what the training loss and the held-out perplexity use),
  restricted to those positions.
- RecGen (and exact-local) are not the training forward; they are scored by teacher-forced generation
  (generation/agreement.py: the true continuation is fed token by token). That path scores HierGen as
  well; being exact, its NLL equals the forward's (tests/test_sweep.py), and is kept as
  `hiergen_generation_nll` so a run's record shows it.
"""

from __future__ import annotations

import functools
import hashlib
import math

import jax
import jax.numpy as jnp
import numpy as np

from photon_jax.config import ModelConfig
from photon_jax.data.loading import pipeline
from photon_jax.errors import UserError
from photon_jax.generation.agreement import agreement
from photon_jax.model import build_model
from photon_jax.model.hierarchy import modes_for
from photon_jax.model.losses import token_nll


def held_out_windows(data_dir, seq_len: int, count: int) -> np.ndarray:
    """(windows, seq_len) int32: the full windows among the first `count` of the validation split."""
    rows = []
    for batch in pipeline.eval_batches(data_dir, "validation", seq_len, count, 1):
        rows = [t for t, m in zip(batch["tokens"], batch["mask"]) if m.all()]
    if not rows:
        raise UserError("the validation split has no full window to score")
    return np.stack(rows).astype(np.int32)


def tokens_digest(windows) -> str:
    windows = np.ascontiguousarray(windows, np.int32)
    return hashlib.sha256(f"{windows.shape}".encode() + windows.tobytes()).hexdigest()[:16]


def exact_mode(model_cfg: ModelConfig) -> str:
    return "vanilla" if model_cfg.family == "vanilla" else "hiergen"


def approximate_modes(model_cfg: ModelConfig) -> list[str]:
    """The modes that are not the training forward (none for vanilla and for one-level Block, whose recgen
    is hiergen's computation)."""
    if model_cfg.family == "vanilla" or len(model_cfg.levels) < 2:
        return []
    return [m for m in modes_for(model_cfg) if m != "hiergen"]


@functools.lru_cache(maxsize=8)  # one compiled forward per architecture (runs of a grid share them)
def _forward_nll_fn(model_cfg: ModelConfig):
    model = build_model(model_cfg)

    def nll(params, tokens, mask):
        logits, _ = model.apply({"params": params}, tokens, mask)
        return token_nll(model_cfg, logits, tokens)  # (B, T-1): targets tokens[:, 1:]

    return jax.jit(nll)


def forward_nll(model_cfg: ModelConfig, params, windows, prompt_len: int) -> float:
    """Mean training-forward NLL of tokens[:, prompt_len:], each given every token before it."""
    if isinstance(params, dict) and set(params) == {"params"}:
        params = params["params"]
    tokens = jnp.asarray(windows, jnp.int32)
    nll = np.asarray(_forward_nll_fn(model_cfg)(params, tokens, jnp.ones(tokens.shape, jnp.float32)), np.float64)
    return float(nll[:, prompt_len - 1:].mean())  # target j of the (B, T-1) NLL is token j + 1


def _entry(nll: float, scored_by: str) -> dict:
    return {"nll": nll, "perplexity": math.exp(min(nll, 50.0)), "scored_by": scored_by}


def score_windows(model_cfg: ModelConfig, params, windows, prompt_len: int | None = None,
                  agreement_result: dict | None = None) -> dict:
    """Window NLL and perplexity of every mode of the model. `agreement_result`: agreement() already run on
    these windows with this prompt length (reused, not rerun); without it, the approximate modes are scored
    here (teacher-forced only)."""
    windows = np.asarray(windows)
    if windows.ndim != 2 or windows.shape[1] < 2:
        raise UserError(f"windows must be (count, length >= 2), got shape {windows.shape}")
    count, length = windows.shape
    prompt_len = prompt_len or length // 2
    if not 1 <= prompt_len < length:
        raise UserError(f"prompt_len must be in [1, {length - 1}], got {prompt_len}")
    exact = exact_mode(model_cfg)
    out = {"windows": count, "seq_len": length, "prompt_len": prompt_len, "positions": count * (length - prompt_len),
           "tokens_sha256": tokens_digest(windows), "exact_mode": exact,
           "modes": {exact: _entry(forward_nll(model_cfg, params, windows, prompt_len), "training forward")}}
    others = approximate_modes(model_cfg)
    if not others:
        return out
    if agreement_result is None:
        agreement_result = agreement(model_cfg, params, windows, prompt_len, free_running=False, modes=others)
    shape = (agreement_result["windows"], agreement_result["prompt_len"], agreement_result["positions"])
    if shape != (count, prompt_len, out["positions"]):
        raise UserError(f"the agreement result covers (windows, prompt_len, positions) {shape}, not "
                        f"{(count, prompt_len, out['positions'])}")
    out["hiergen_generation_nll"] = agreement_result["nll_hiergen"]
    for mode in others:
        forced = agreement_result[f"hiergen_vs_{mode}"]["teacher_forced"]
        out["modes"][mode] = _entry(forced["nll"], "teacher-forced generation")
    return out
