"""How far recgen (and exact-local) are from exact hiergen, on held-out token windows.

agreement(model_cfg, params, token_batch, prompt_len=None, free_running=True, modes=None) -> dict

For each window, the first `prompt_len` tokens are the prompt (default: half the window) and
the rest is the continuation. Two measurements per compared mode (hiergen is the reference):

* teacher_forced: both modes are fed the true continuation token by token (the "sampled"
  tokens are forced), and we compare the next-token distributions they produce at every
  continuation position: greedy agreement = fraction of positions with the same argmax;
  kl = mean KL(hiergen || mode) in nats; nll = mean negative log-likelihood of the true
  tokens under each (so the cost of the mode in nats is nll_mode - nll_hiergen).
* free_running: both modes generate greedily from the prompt; token_agreement = fraction of
  positions where the two continuations hold the same token; prefix = mean length of the
  common prefix (after the first difference the contexts differ, so both matter).

Under alignment A, recgen's first level-1 chunk after the prompt is exact, so agreement is
1 there by construction; exact-local vs hiergen is a sanity check (both are exact: 1 / ~0).
"""

from __future__ import annotations

import numpy as np

from photon_jax.config import ModelConfig
from photon_jax.errors import UserError
from photon_jax.generation.api import check_mode, plan, run_rows
from photon_jax.generation.sampling import GREEDY
from photon_jax.model.hierarchy import modes_for


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _forced(cfg, params, mode, prompts, conts):
    out, _, row_len = run_rows(cfg, params, mode, prompts, len(conts[0]), GREEDY, None, 0, record_logits=True,
                               forced=conts)
    return np.stack([out["logits_out"][r, row_len[r]: row_len[r] + len(conts[0])] for r in range(len(prompts))])


def _free(cfg, params, mode, prompts, steps):
    # record_logits as in _forced: the same compiled programs serve both runs
    out, _, row_len = run_rows(cfg, params, mode, prompts, steps, GREEDY, None, 0, record_logits=True)
    return np.stack([out["tokens"][r, row_len[r]: row_len[r] + steps] for r in range(len(prompts))])


def agreement(model_cfg: ModelConfig, params, token_batch, prompt_len: int | None = None,
              free_running: bool = True, modes=None) -> dict:
    """modes: the modes to compare with hiergen (default: every other mode the model can run)."""
    if model_cfg.family != "photon":
        raise UserError("agreement compares PHOTON generation modes; a vanilla model has only one")
    batch = np.asarray(token_batch)
    if batch.ndim != 2 or batch.shape[1] < 2:
        raise UserError(f"token_batch must be (windows, length >= 2), got shape {batch.shape}")
    t = batch.shape[1]
    prompt_len = prompt_len or t // 2
    if not 1 <= prompt_len < t:
        raise UserError(f"prompt_len must be in [1, {t - 1}], got {prompt_len}")
    steps = t - prompt_len
    prompts = [list(map(int, row[:prompt_len])) for row in batch]
    conts = [list(map(int, row[prompt_len:])) for row in batch]
    plan(model_cfg, "hiergen", prompts, steps, GREEDY, None, 1, None)  # validates the tokens
    targets = batch[:, prompt_len:]

    ref = _log_softmax(_forced(model_cfg, params, "hiergen", prompts, conts))
    ref_free = _free(model_cfg, params, "hiergen", prompts, steps) if free_running else None
    result = {"windows": int(batch.shape[0]), "prompt_len": prompt_len, "positions": int(targets.size),
              "nll_hiergen": float(-np.take_along_axis(ref, targets[..., None], -1).mean())}
    for mode in modes or modes_for(model_cfg):
        mode = check_mode(model_cfg, mode)
        if mode == "hiergen":
            continue
        other = _log_softmax(_forced(model_cfg, params, mode, prompts, conts))
        entry = {
            "teacher_forced": {
                "greedy_agreement": float((ref.argmax(-1) == other.argmax(-1)).mean()),
                "kl": float((np.exp(ref) * (ref - other)).sum(-1).mean()),
                "nll": float(-np.take_along_axis(other, targets[..., None], -1).mean()),
            }
        }
        if free_running:
            free = _free(model_cfg, params, mode, prompts, steps)
            same = free == ref_free
            prefix = np.where(same.all(1), steps, np.argmin(same, axis=1))
            entry["free_running"] = {"token_agreement": float(same.mean()), "prefix": float(prefix.mean())}
        result[f"hiergen_vs_{mode}"] = entry
    return result
