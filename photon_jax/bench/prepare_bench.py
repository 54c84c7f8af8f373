"""`photon-jax bench prepare`: how fast `prepare` tokenizes, per worker count, and how much memory it holds.

Each worker count runs the real prepare in a fresh process; peak RSS is VmHWM of that process (incl. the
merge) and of its largest worker process, as prepare records them in the manifest (getrusage's ru_maxrss
would include the memory of the process that started it) on the same corpus and tokenizer; only preparation is
timed (the tokenizer is trained once beforehand, or given). The corpus is given, or generated: JSONL
documents of 20-400 consecutive lines of the bundled plays from random places (real English text, the
same token statistics as the plays). Throughput is input bytes on disk per second (MB = 10^6 bytes).
The projection divides ~800 GB of text (the Pile, uncompressed) by the per-worker throughput of the
largest worker count times 64 cores.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from photon_jax.data.preparation.corpus import corpus_inputs, shakespeare_files
from photon_jax.data.preparation.formats import iter_documents
from photon_jax.errors import UserError
from photon_jax.reports import output
from photon_jax.tokenizers.tokenizer import train_tokenizer

PILE_BYTES = 800e9
PROJECTION_CORES = 64
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)(i?)[bB]?\s*$")
_TOKENIZER_SAMPLE_BYTES = 16 << 20


def parse_size(text: str) -> int:
    """"1GB" -> 10^9 bytes, "200MB" -> 2 * 10^8, "512MiB" -> 512 * 2^20."""
    found = _SIZE.match(text or "")
    if not found:
        raise UserError(f"--size must look like 200MB or 1GB, got {text!r}")
    number, unit, binary = float(found.group(1)), found.group(2).lower(), found.group(3)
    scale = {"": 1, "k": 1, "m": 2, "g": 3}[unit] if unit else 0
    size = int(number * (1024 if binary else 1000) ** scale)
    if size <= 0:
        raise UserError(f"--size must be > 0, got {text!r}")
    return size


def write_generated_corpus(path: Path, size_bytes: int, seed: int = 0) -> Path:
    """JSONL of play excerpts (20-400 consecutive non-blank lines from random places) up to size_bytes."""
    lines = [line for p in shakespeare_files() for line in p.read_text().splitlines() if line.strip()]
    rng = np.random.default_rng(seed)
    written = 0
    with open(path, "w") as handle:
        while written < size_bytes:
            start = int(rng.integers(0, len(lines) - 400))
            record = json.dumps({"text": "\n".join(lines[start:start + int(rng.integers(20, 400))]) + "\n"}) + "\n"
            handle.write(record)
            written += len(record)
    return path


_CHILD = """
import json, sys, time
from photon_jax.config import DataConfig
from photon_jax.data.preparation.prepare import prepare
if __name__ == "__main__":
    corpus, tokenizer, out = sys.argv[1:4]
    workers, unit_bytes = int(sys.argv[4]), int(sys.argv[5])
    start = time.perf_counter()
    m = prepare(DataConfig(corpus=corpus, tokenizer=tokenizer), out, 0, workers=workers, unit_bytes=unit_bytes)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "documents": m["documents"], "units": m["units"],
                      "tokens": sum(s["tokens"] for s in m["splits"].values()),
                      "utf8_bytes": sum(s["utf8_bytes"] for s in m["splits"].values()),
                      "peak_rss_mib": m["prepared_with"]["peak_rss_mib"]}))
"""


def _sample_tokenizer(corpus: str, out: Path, vocab_size: int) -> str:
    texts, taken = [], 0
    for doc in iter_documents(corpus):
        texts.append(doc.text)
        taken += len(doc.text)
        if taken >= _TOKENIZER_SAMPLE_BYTES:
            break
    return train_tokenizer(texts, out, vocab_size).path


def _run_one(corpus: str, tokenizer: str, out: Path, workers: int, unit_bytes: int) -> dict:
    run = subprocess.run([sys.executable, "-c", _CHILD, str(corpus), tokenizer, str(out), str(workers),
                          str(unit_bytes)], capture_output=True, text=True)
    if run.returncode != 0:
        last = (run.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"prepare with {workers} workers failed: {last}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def run_prepare_bench(size_bytes: int | None, workers: list[int], *, corpus: str | None = None,
                      tokenizer: str | None = None, vocab_size: int = 8192, unit_bytes: int = 64 << 20,
                      workdir: str | None = None, keep: bool = False, log: Callable[[str], None] = print) -> dict:
    root = Path(workdir or tempfile.mkdtemp(prefix="photon-bench-prepare-")).absolute()
    root.mkdir(parents=True, exist_ok=True)
    try:
        if corpus:
            spec, input_bytes = corpus, sum(f.size for f in corpus_inputs(corpus))
        else:
            path = root / "corpus.jsonl"
            if not path.is_file() or path.stat().st_size < size_bytes:
                log(f"generating a {size_bytes / 1e6:.0f} MB corpus from the bundled plays ...")
                write_generated_corpus(path, size_bytes)
            spec, input_bytes = str(path), path.stat().st_size
        if not tokenizer:
            log(f"training a {vocab_size}-piece tokenizer on a {_TOKENIZER_SAMPLE_BYTES >> 20} MiB sample ...")
            tokenizer = _sample_tokenizer(spec, root / "tokenizer.model", vocab_size)
        results = []
        for count in workers:
            out = root / f"data-w{count}"
            shutil.rmtree(out, ignore_errors=True)
            log(f"prepare with {count} worker(s) ...")
            one = _run_one(spec, tokenizer, out, count, unit_bytes)
            shutil.rmtree(out, ignore_errors=True)
            mb_s = input_bytes / 1e6 / one["seconds"]
            results.append({"workers": count, "seconds": one["seconds"], "input_bytes": input_bytes,
                            "utf8_bytes": one["utf8_bytes"], "documents": one["documents"], "units": one["units"],
                            "tokens": one["tokens"], "mb_per_s": mb_s, "mb_per_s_per_worker": mb_s / count,
                            "tokens_per_s": one["tokens"] / one["seconds"],
                            "peak_rss_main_mib": one["peak_rss_mib"]["main"],
                            "peak_rss_worker_mib": one["peak_rss_mib"]["workers"]})
        base = min(results, key=lambda r: r["workers"])  # 1 worker when asked for; else per worker of the fewest
        for r in results:
            r["speedup_vs_1"] = r["mb_per_s"] / base["mb_per_s_per_worker"]
        widest = max(results, key=lambda r: r["workers"])
        hours = PILE_BYTES / (widest["mb_per_s_per_worker"] * 1e6 * PROJECTION_CORES) / 3600
        settings = {"size_bytes": input_bytes, "corpus": corpus or "generated from the bundled plays",
                    "tokenizer": tokenizer, "unit_bytes": unit_bytes, "workers": workers}
        notes = [f"projection: the Pile (~{PILE_BYTES / 1e9:.0f} GB of text) on a {PROJECTION_CORES}-core host at "
                 f"{widest['mb_per_s_per_worker']:.2f} MB/s per worker: {hours:.1f} h"]
        data = output.envelope("prepare", settings, "1 worker", results, notes)
        data["projection"] = {"bytes": PILE_BYTES, "cores": PROJECTION_CORES, "hours": hours}
        return data
    finally:
        if not keep and not workdir:
            shutil.rmtree(root, ignore_errors=True)


def prepare_table(data: dict) -> str:
    rows = [f"{'workers':>7} {'seconds':>8} {'MB/s':>7} {'MB/s/worker':>11} {'tokens/s':>10} "
            f"{'speed-up':>8} {'peak RSS main':>13} {'peak RSS worker':>15}"]
    for r in data["results"]:
        rows.append(f"{r['workers']:>7} {r['seconds']:>8.1f} {r['mb_per_s']:>7.2f} {r['mb_per_s_per_worker']:>11.2f} "
                    f"{r['tokens_per_s']:>10,.0f} {r['speedup_vs_1']:>7.2f}x {r['peak_rss_main_mib']:>9.0f} MiB "
                    + (f"{r['peak_rss_worker_mib']:>11.0f} MiB" if r["peak_rss_worker_mib"] is not None
                       else f"{'(in main)':>15}"))
    return "\n".join(rows + data["notes"])


def prepare_plot(data: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = data["results"]
    workers = [r["workers"] for r in results]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(workers, [r["mb_per_s"] for r in results], "o-", label="measured")
    base = results[0]["mb_per_s_per_worker"]
    ax.plot(workers, [base * w for w in workers], "--", color="gray", label="linear in workers")
    ax.set_xlabel("worker processes")
    ax.set_ylabel("MB/s of input")
    ax.set_title(f"photon-jax prepare, {data['settings']['size_bytes'] / 1e6:.0f} MB")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
