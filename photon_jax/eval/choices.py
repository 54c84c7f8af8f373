"""Multiple-choice scoring by log-likelihood (HellaSwag / SciQ / ARC-Easy shaped JSONL)."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from photon_jax.config import ModelConfig
from photon_jax.errors import UserError
from photon_jax.model import build_model
from photon_jax.model.losses import token_nll


def load_choice_file(path: str | Path) -> list[dict]:
    """JSONL rows {"context": str, "choices": [str, ...], "answer": int}."""
    rows = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{path}:{number} is not valid JSON") from None
        ok = (isinstance(row, dict) and isinstance(row.get("context"), str)
              and isinstance(row.get("choices"), list) and len(row["choices"]) >= 2
              and all(isinstance(c, str) for c in row["choices"])
              and isinstance(row.get("answer"), int) and 0 <= row["answer"] < len(row["choices"]))
        if not ok:
            raise UserError(f"{path}:{number} needs context (str), choices (>= 2 str) and a valid answer index")
        rows.append(row)
    if not rows:
        raise UserError(f"{path} has no questions")
    return rows


def score_choices(cfg: ModelConfig, params, encode, rows: list[dict], max_len: int, pad_id: int = 0) -> dict:
    """Accuracy by summed log-likelihood of each choice (acc) and per byte (acc_norm, length-normalised).

    Each (context, choice) is one sequence right-padded to a multiple of the model's
    meta-context; right padding cannot change earlier logits (causality), so the
    scores equal those of the unpadded sequence.
    """
    model = build_model(cfg)
    unit = cfg.meta_context

    @jax.jit
    def nll_fn(tokens_bt):
        logits, _ = model.apply({"params": params}, tokens_bt)
        return token_nll(cfg, logits, tokens_bt)

    correct, correct_norm = 0, 0
    for row in rows:
        context = encode(row["context"])
        seqs, spans = [], []
        for choice in row["choices"]:
            cont = encode(choice)
            seq = (context + cont)[-max_len:]
            n_cont = min(len(cont), len(seq) - 1)
            seqs.append(seq)
            spans.append(n_cont)
        width = max(len(s) for s in seqs)
        width = max(unit, -(-width // unit) * unit)
        tokens = np.full((len(seqs), width), pad_id, np.int32)
        for i, s in enumerate(seqs):
            tokens[i, : len(s)] = s
        nll = np.asarray(nll_fn(jnp.asarray(tokens)))  # (n, width-1): nll[:, j] scores token j+1
        scores, norm_scores = [], []
        for i, (s, n_cont) in enumerate(zip(seqs, spans)):
            ll = -float(np.sum(nll[i, len(s) - 1 - n_cont: len(s) - 1]))
            scores.append(ll)
            norm_scores.append(ll / max(len(row["choices"][i].encode("utf-8")), 1))
        correct += int(np.argmax(scores) == row["answer"])
        correct_norm += int(np.argmax(norm_scores) == row["answer"])
    n = len(rows)
    return {"questions": n, "acc": correct / n, "acc_norm": correct_norm / n}
