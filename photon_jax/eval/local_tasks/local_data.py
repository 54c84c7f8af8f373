"""Datasets of the bundled offline tasks, read from the JSONL files beside this file (no network).

Built by scripts/make_shakespeare_tasks.py from the plays the default data split holds out. The first
FEWSHOT questions of the next-line task are its few-shot pool (`train`), the rest its test split.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets

HERE = Path(__file__).resolve().parent
FEWSHOT = 20


def _rows(name: str) -> list[dict]:
    lines = (HERE / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def next_line(**_) -> datasets.DatasetDict:
    rows = _rows("shakespeare_next_line")
    return datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:FEWSHOT]),
                                 "test": datasets.Dataset.from_list(rows[FEWSHOT:])})


def passages(**_) -> datasets.DatasetDict:
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(_rows("shakespeare_ppl"))})
