"""Multiple-choice scoring by log-likelihood (HellaSwag / SciQ / ARC-Easy shaped JSONL)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from photon_jax.config import ModelConfig
from photon_jax.errors import UserError
from photon_jax.eval.scoring import SpanScorer, context_continuation_span
from photon_jax.tokenizers.tokenizer import Tokenizer


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


def score_choices(cfg: ModelConfig, params, tokenizer: Tokenizer, rows: list[dict], max_len: int,
                  batch_size: int = 8, mesh=None, batch_sharding=None) -> dict:
    """Accuracy by summed log-likelihood of each choice (acc) and per UTF-8 byte of the choice (acc_norm),
    with every choice's log-likelihood in `questions`.

    Each (context, choice) is scored exactly as the harness model scores a loglikelihood request
    (scoring.py: [EOS] + context + choice, batched on the width ladder)."""
    spans = [context_continuation_span(tokenizer.encode, tokenizer.eos_id, row["context"], choice, max_len)
             for row in rows for choice in row["choices"]]
    scorer = SpanScorer(cfg, params, max_len, batch_size, tokenizer.pad_id, mesh, batch_sharding)
    scores = iter(scorer.score(spans))
    questions, correct, correct_norm = [], 0, 0
    for row in rows:
        lls = [next(scores)[0] for _ in row["choices"]]
        per_byte = [ll / max(len(c.encode("utf-8")), 1) for ll, c in zip(lls, row["choices"])]
        pred, pred_norm = int(np.argmax(lls)), int(np.argmax(per_byte))
        correct += pred == row["answer"]
        correct_norm += pred_norm == row["answer"]
        questions.append({"loglikelihoods": lls, "pred": pred, "pred_norm": pred_norm, "answer": row["answer"]})
    n = len(rows)
    return {"questions": n, "acc": correct / n, "acc_norm": correct_norm / n, "per_question": questions}
