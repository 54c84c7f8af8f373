"""Build the bundled offline harness tasks (photon_jax/eval/local_tasks/*.jsonl) from the held-out plays.

The documents held out by the default data split (data.validation_fraction 0.05, seed 0: Henry VIII and
A Lover's Complaint) are never trained on by `photon-jax run`, so the tasks measure generalisation:

- shakespeare_next_line (multiple choice, HellaSwag-shaped): a speaker and the first lines of a speech;
  the true next line against three lines drawn from elsewhere in the same play.
- shakespeare_ppl (rolling log-likelihood, WikiText-shaped): whole held-out speeches and stanzas,
  scored by word perplexity, byte perplexity and bits per byte.

Deterministic (fixed seed); rerun only when the corpus or the split changes:
    .venv/bin/python scripts/make_shakespeare_tasks.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from photon_jax.config import DataConfig
from photon_jax.data.preparation.formats import read_corpus
from photon_jax.data.preparation.prepare import split_documents

OUT = Path(__file__).resolve().parent.parent / "photon_jax" / "eval" / "local_tasks"
SPEAKER = re.compile(r"^[A-Z][A-Z' ,&-]+\.?$")
# a speech ends at an inline speaker ("NORFOLK. I thank your Grace,") or a stage direction
SPEECH_END = re.compile(r"^([A-Z][A-Z' ,&-]{2,}\.\s|\[|Enter |Exit|Exeunt|Re-enter |Flourish|Sennet)")
QUESTIONS, PASSAGES, SEED = 200, 60, 0


def held_out_documents():
    cfg = DataConfig()
    docs = read_corpus(cfg.corpus)
    held_out = split_documents(len(docs), cfg.validation_fraction, cfg.seed)
    return [d for d, v in zip(docs, held_out) if v]


def speeches(text: str) -> list[tuple[str, list[str]]]:
    """(speaker, verse lines) for every blank-line separated block that starts with a speaker name."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line.rstrip() for line in block.strip("\n").splitlines() if line.strip()]
        if len(lines) < 2 or not SPEAKER.match(lines[0]):
            continue
        verse = []
        for line in lines[1:]:
            if SPEAKER.match(line) or SPEECH_END.match(line.strip()):
                break
            verse.append(line.strip())
        if verse:
            out.append((lines[0].rstrip("."), verse))
    return out


def next_line_questions(play: str, rng) -> list[dict]:
    found = speeches(play)
    pool = sorted({line for _, lines in found for line in lines if len(line) >= 20})
    candidates = [(s, lines) for s, lines in found if len(lines) >= 3 and len(lines[2]) >= 20]
    picks = rng.choice(len(candidates), size=min(QUESTIONS, len(candidates)), replace=False)
    questions = []
    for index in sorted(picks):
        speaker, lines = candidates[index]
        answer = lines[2]
        distractors = []
        while len(distractors) < 3:
            line = pool[rng.integers(len(pool))]
            if line != answer and line not in distractors and line not in lines:
                distractors.append(line)
        position = int(rng.integers(4))
        choices = distractors[:position] + [answer] + distractors[position:]
        questions.append({"context": f"{speaker}.\n{lines[0]}\n{lines[1]}\n", "choices": choices,
                          "answer": position})
    return questions


def passages(docs, rng) -> list[dict]:
    """Speeches of at least 8 lines (plays) and stanzas (poems), as they stand in the text."""
    out = []
    for doc in docs:
        found = [f"{s}.\n" + "\n".join(lines) for s, lines in speeches(doc.text) if len(lines) >= 8]
        if not found:  # a poem: its stanzas
            found = [b.strip() for b in re.split(r"\n\s*\n", doc.text) if len(b.strip().splitlines()) >= 5]
        out += found
    picks = sorted(rng.choice(len(out), size=min(PASSAGES, len(out)), replace=False))
    return [{"page": out[i]} for i in picks]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    docs = held_out_documents()
    rng = np.random.default_rng(SEED)
    plays = [d for d in docs if len(speeches(d.text)) > 100]
    questions = [q for d in plays for q in next_line_questions(d.text, rng)]
    write_jsonl(OUT / "shakespeare_next_line.jsonl", questions)
    write_jsonl(OUT / "shakespeare_ppl.jsonl", passages(docs, rng))
    print(f"{len(questions)} questions from {[d.name for d in plays]}; passages from {[d.name for d in docs]}")


if __name__ == "__main__":
    main()
