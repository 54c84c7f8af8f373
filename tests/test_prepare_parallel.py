"""Parallel, resumable, bounded-memory prepare on generated corpora of real text (the bundled plays, cut and
shuffled into documents): 2 workers = 1 worker byte for byte, a kill -9 mid-way resumes without redoing
finished units, two processes of a multi-host prepare = one process, and peak memory does not grow with
the corpus."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from photon_jax.bench.prepare_bench import write_generated_corpus
from photon_jax.config import DataConfig
from photon_jax.data.loading import pipeline
from photon_jax.data.manifest import FORMAT_VERSION, load_manifest
from photon_jax.data.preparation.corpus import shakespeare_files
from photon_jax.data.preparation.prepare import _fingerprint, prepare, split_documents
from photon_jax.data.preparation.split import DocumentSplit
from photon_jax.data.preparation.unit_writer import _ENCODE_BATCH_CHARS
from photon_jax.data.preparation.units import TEXT_PART_BYTES
from photon_jax.tokenizers.tokenizer import train_tokenizer

UNIT_MB = 0.5


def tree(data_dir: Path) -> dict[str, bytes]:
    """Every file of a prepared dir except the manifest (whose timing facts differ), by relative path."""
    return {p.relative_to(data_dir).as_posix(): p.read_bytes() for p in sorted(data_dir.rglob("*"))
            if p.is_file() and p.name != "manifest.json"}


def same_data(a: Path, b: Path) -> None:
    assert tree(a) == tree(b)
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    for m in (ma, mb):
        m.pop("prepared_with")
    assert ma == mb


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("parallel")
    corpus = write_generated_corpus(root / "corpus.jsonl", 12 << 20)
    sample = [json.loads(line)["text"] for _, line in zip(range(200), open(corpus))]
    tok = train_tokenizer(sample, root / "tok.model", 1024)
    cfg = DataConfig(corpus=str(corpus), tokenizer=tok.path, validation_fraction=0.01)
    reference = root / "reference"
    manifest = prepare(cfg, reference, 0, workers=1, unit_bytes=int(UNIT_MB * (1 << 20)))
    assert manifest["units"] >= 20
    return root, cfg, reference


def _cli(cfg: DataConfig, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "photon_jax.cli.main", "prepare", "--corpus", cfg.corpus, "--tokenizer",
            cfg.tokenizer, "--vocab-size", "0", "--validation-fraction", str(cfg.validation_fraction),
            "--unit-mb", str(UNIT_MB), "--out", str(out), *extra]


def test_two_workers_equal_one(setup, tmp_path):
    root, cfg, reference = setup
    manifest = prepare(cfg, tmp_path / "two", 0, workers=2, unit_bytes=int(UNIT_MB * (1 << 20)))
    assert manifest["prepared_with"]["workers"] == 2
    same_data(tmp_path / "two", reference)


def test_kill_during_prepare_then_resume(setup, tmp_path):
    root, cfg, reference = setup
    out = tmp_path / "data"
    child = subprocess.Popen(_cli(cfg, out, "--workers", "2"), start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    units = []
    deadline = time.time() + 300
    while len(units) < 3 and time.time() < deadline and child.poll() is None:
        # finished units only: one still being written sits in a ".tmp-" dir that may hold meta.json already
        units = sorted(p.parent for p in tmp_path.glob(".data.partial-*/units/[!.]*/meta.json"))
        time.sleep(0.02)
    os.killpg(child.pid, signal.SIGKILL)  # the CLI and its worker processes
    child.wait()
    assert child.returncode == -signal.SIGKILL, child.stderr.read().decode()[-2000:]
    assert not out.exists() and len(units) >= 3
    finished = {p: p.stat().st_mtime_ns for unit in units for p in unit.iterdir()}
    total = json.loads((reference / "manifest.json").read_text())["units"]
    assert len(units) < total, "the prepare finished before it could be killed"

    manifest = prepare(cfg, out, 0, workers=2, unit_bytes=int(UNIT_MB * (1 << 20)))
    assert not manifest["reused"]
    for path, stamp in finished.items():  # finished units were kept, not redone
        moved = out / path.relative_to(path.parents[2])
        assert moved.stat().st_mtime_ns == stamp, moved
    same_data(out, reference)
    assert [p.name for p in tmp_path.iterdir()] == ["data"]  # the partial dir became the data dir


def children_of(pid: int) -> set[int]:
    """Live processes whose parent is `pid` (from /proc: the workers of a prepare)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def start_and_wait_for_a_unit(cfg, out, tmp_path):
    """The real CLI with 2 workers, its own process group; returns once a work unit is finished."""
    # Ctrl-C's default disposition in the child: a suite started in the background (`cmd &` in a script)
    # inherits SIGINT ignored, and the prepare would rightly not stop on it
    child = subprocess.Popen(_cli(cfg, out, "--workers", "2"), start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while time.time() < deadline and child.poll() is None:
        if list(tmp_path.glob(".data.partial-*/units/[!.]*/meta.json")) and len(children_of(child.pid)) == 2:
            return child
        time.sleep(0.02)
    child.kill()
    pytest.fail(f"no finished unit with 2 workers running: {child.stderr.read().decode()[-2000:]}")


@pytest.mark.parametrize("sig, to_group, code", [(signal.SIGTERM, False, 0), (signal.SIGINT, True, 130)],
                         ids=["sigterm", "ctrl-c"])
def test_a_signal_stops_workers_keeps_units_and_the_rerun_is_identical(setup, tmp_path, sig, to_group, code):
    """SIGTERM to the main process, or Ctrl-C (SIGINT to the whole process group, workers included): the
    workers stop, the finished units stay, one line names them, exit 0 / 130; the rerun reuses them and
    gives the uninterrupted run's bytes."""
    root, cfg, reference = setup
    out = tmp_path / "data"
    child = start_and_wait_for_a_unit(cfg, out, tmp_path)
    workers = children_of(child.pid)
    os.killpg(child.pid, sig) if to_group else child.send_signal(sig)
    assert child.wait(timeout=60) == code
    err = child.stderr.read().decode().strip().splitlines()
    said = re.fullmatch(rf"photon-jax: prepare stopped by {sig.name}: (\d+) of (\d+) work units finished, kept in "
                        rf"(\S+); rerun the same command to resume", err[-1] if err else "")
    assert len(err) == 1 and said, err
    assert not any(alive(w) for w in workers)
    done, total = int(said[1]), int(said[2])
    units = sorted(p.parent for p in Path(said[3]).glob("units/[!.]*/meta.json"))
    assert 1 <= done == len(units) < total
    finished = {p: p.stat().st_mtime_ns for unit in units for p in unit.iterdir()}

    rerun = subprocess.run(_cli(cfg, out, "--workers", "2"), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    for path, stamp in finished.items():  # kept, not redone
        assert (out / path.relative_to(path.parents[2])).stat().st_mtime_ns == stamp
    same_data(out, reference)


def test_no_worker_outlives_a_kill_9_of_the_main_process(setup, tmp_path):
    """Two 6 MB units, one per worker (seconds of work each): kill -9 the main process once both workers have
    started theirs; the workers die with it instead of working on (they used to finish their units and, with
    large units, live on for many minutes)."""
    root, cfg, reference = setup
    child = subprocess.Popen(_cli(cfg, tmp_path / "data", "--workers", "2", "--unit-mb", "6"),  # the last one counts
                             start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while len(list(tmp_path.glob(".data.partial-*/units/.tmp-*"))) < 2 and time.time() < deadline:
        assert child.poll() is None, child.stderr.read().decode()[-2000:]
        time.sleep(0.01)
    workers = children_of(child.pid)  # and multiprocessing's resource tracker, which it used to start
    assert len(workers) >= 2
    child.kill()  # the main process only
    child.wait()
    deadline = time.time() + 30
    while any(alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(alive(w) for w in workers), [w for w in workers if alive(w)]
    assert not list(tmp_path.glob(".data.partial-*/units/[!.]*/meta.json"))  # stopped mid-unit, not after it


_NO_MAIN_GUARD = """
import sys
from photon_jax.config import DataConfig
from photon_jax.data.preparation.prepare import prepare
corpus, tokenizer, out = sys.argv[1:4]
manifest = prepare(DataConfig(corpus=corpus, tokenizer=tokenizer), out, 0, workers=2, unit_bytes=256)
print("workers", manifest["prepared_with"]["workers"], "units", manifest["units"])
"""


def test_workers_from_a_script_without_a_main_guard(small, tmp_path):
    """Worker processes never re-import the calling script (which would prepare again in each worker)."""
    root, cfg = small
    script = tmp_path / "script.py"
    script.write_text(_NO_MAIN_GUARD)
    run = subprocess.run([sys.executable, str(script), cfg.corpus, cfg.tokenizer, str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    said = run.stdout.split()
    assert run.returncode == 0 and said[:2] == ["workers", "2"] and int(said[3]) > 2, (run.stdout, run.stderr[-2000:])
    prepare(cfg, tmp_path / "one", 0, workers=1, unit_bytes=256)
    same_data(tmp_path / "out", tmp_path / "one")


def test_two_processes_equal_one(setup, tmp_path):
    """A multi-host prepare: process p takes every 2nd unit into a shared dir, process 0 merges."""
    root, cfg, reference = setup
    out = tmp_path / "data"
    children = [subprocess.Popen(_cli(cfg, out, "--workers", "1", "--process-index", str(i), "--process-count", "2"),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (1, 0)]
    results = [c.communicate(timeout=600) for c in children]
    assert [c.returncode for c in children] == [0, 0], results
    assert "process 0 merges" in results[0][0] and "prepared" in results[1][0]
    same_data(out, reference)


_MEASURE = """
import json, sys
from photon_jax.config import DataConfig
from photon_jax.data.preparation.prepare import prepare
if __name__ == "__main__":
    corpus, tokenizer, out, unit_bytes = sys.argv[1:5]
    manifest = prepare(DataConfig(corpus=corpus, tokenizer=tokenizer), out, 0, workers=2, unit_bytes=int(unit_bytes))
    print(json.dumps({**manifest["prepared_with"]["peak_rss_mib"], "units": manifest["units"]}))
"""
# Work units of two encoding batches: a worker's peak is one batch of text and its tokens once a unit holds more
# than a batch (4 MiB units peaked ~70 MiB lower, 8 MiB ones within ~15 MiB of the default 64 MiB units).
MEASURE_UNIT_BYTES = 2 * _ENCODE_BATCH_CHARS


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_corpus(setup, tmp_path):
    """Peak RSS (MiB: VmHWM of the main process, incl. the merge, and of the largest worker process, in a fresh
    process) preparing 24 MiB and 96 MiB in 8 MiB work units, 3 units and then 12 (each of the 2 workers
    tokenizes 1-2 units, then 6): flat, and far under 1 GiB. (It was 100 and 200 MiB in the default 64 MiB
    units, 2 units and then 4, at 2.5x the CPU time; measured 2026-12-07, MiB main/workers: 192/209 -> 192/209
    there, 192/194 -> 192/198 here.)"""
    root, cfg, reference = setup
    peaks = {}
    for mb, units in ((24, 3), (96, 12)):
        corpus = write_generated_corpus(tmp_path / f"c{mb}.jsonl", mb << 20, seed=mb)
        run = subprocess.run([sys.executable, "-c", _MEASURE, str(corpus), cfg.tokenizer, str(tmp_path / f"d{mb}"),
                              str(MEASURE_UNIT_BYTES)], capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, run.stderr[-2000:]
        peaks[mb] = json.loads(run.stdout.strip().splitlines()[-1])
        assert peaks[mb].pop("units") == units, peaks
        corpus.unlink()
    for who in ("main", "workers"):
        small, large = peaks[24][who], peaks[96][who]
        # 4x the corpus: +32 MiB at most (a leak of half a byte per corpus byte fails it; doubling 100 MiB with
        # +15% + 32 MiB allowed one of 0.7)
        assert large < small + 32, (who, peaks)
        assert large < 1024, (who, peaks)


_PEAKS = """
import json, sys
from photon_jax.config import DataConfig
from photon_jax.data.preparation.prepare import prepare
corpus, tokenizer, out = sys.argv[1:4]
manifest = prepare(DataConfig(corpus=corpus, tokenizer=tokenizer), out, 0, workers=2, unit_bytes=1 << 20)
print(json.dumps({**manifest["prepared_with"]["peak_rss_mib"], "documents": manifest["documents"]}))
"""


def peaks(corpus: Path, tokenizer: str, out: Path) -> dict:
    """Peak RSS (MiB) of the main process (merge included) and of the largest worker, in a fresh process."""
    run = subprocess.run([sys.executable, "-c", _PEAKS, str(corpus), tokenizer, str(out)], capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_peak_memory_is_flat_when_one_text_file_grows_4x(setup, tmp_path):
    """One .txt file of 4 MB, then 16 MB: read as documents of about 1 MiB (units.TEXT_PART_BYTES), never
    whole. Measured at 8 and 32 MB before: one document, main process 630 -> 1694 MiB (text, bytes and
    token list in memory); after: main 189 -> 189 MiB, workers 106 -> 107 MiB."""
    root, cfg, reference = setup
    plays = "".join(p.read_text(encoding="utf-8") for p in shakespeare_files())
    got = {}
    for mb in (4, 16):
        corpus = tmp_path / f"book{mb}.txt"
        corpus.write_text(plays * (mb * (1 << 20) // len(plays.encode()) + 1), encoding="utf-8")
        got[mb] = peaks(corpus, cfg.tokenizer, tmp_path / f"d{mb}")
        assert got[mb]["documents"] == -(-corpus.stat().st_size // TEXT_PART_BYTES), got  # parts of ~1 MiB
        corpus.unlink()
    for who in ("main", "workers"):
        assert got[16][who] < got[4][who] + 24, (who, got)


@pytest.mark.slow
def test_peak_memory_is_flat_when_the_document_count_grows_4x(tmp_path):
    """20 MB of JSONL as 250K and as 1M documents: the merge (main process) keeps no per-document state of
    the corpus (it held 5 bytes per document, and the index files' memory-mapped pages), nor a worker more
    than one batch of at most 8192 documents. Measured before: main 196 -> 213 MiB, workers 62 -> 82 MiB;
    after: main 190 -> 192 MiB, workers 59 -> 66 MiB (what is left there grows with the units a worker
    has written, not with the corpus' documents)."""
    words = "the of and to in that is was he for it with as his on be at by had are but from or have".split()
    text = " ".join(np.random.default_rng(0).choice(words, 4000))
    tok = train_tokenizer([text], tmp_path / "tok.model", 300)
    got = {}
    for docs in (250_000, 1_000_000):
        per_doc = (20 << 20) // docs - 14  # bytes of text; the JSON around it is 14
        corpus = tmp_path / f"c{docs}.jsonl"
        with open(corpus, "w") as f:
            f.writelines(f'{{"text": "{text[i % 1000:i % 1000 + per_doc - 7]} {i:06d}"}}\n' for i in range(docs))
        got[docs] = peaks(corpus, str(tok.path), tmp_path / f"d{docs}")
        assert got[docs]["documents"] == docs
        corpus.unlink()
    assert got[1_000_000]["main"] < got[250_000]["main"] + 8, got
    assert got[1_000_000]["workers"] < got[250_000]["workers"] + 16, got


def test_a_format_2_dir_still_loads_and_is_reused_with_its_split(small, tmp_path):
    """Data prepared before the per-document split (format version 2: the same inputs hashed with version 2)
    loads as it is and is reused by prepare, its index files untouched."""
    root, cfg = small
    out = tmp_path / "data"
    manifest = prepare(cfg, out, 0)
    assert manifest["format_version"] == FORMAT_VERSION == 3
    old = dict(manifest, format_version=2, fingerprint=_fingerprint(manifest["inputs"], 2))
    old["inputs"] = dict(old["inputs"], format_version=2)
    old.pop("reused"), old.pop("seconds")
    (out / "manifest.json").write_text(json.dumps(old))
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = prepare(cfg, out, 0)
    assert again["reused"] and again["format_version"] == 2
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps
    assert load_manifest(out)["format_version"] == 2
    assert sum(1 for _ in pipeline.eval_batches(out, "validation", 8, 2, None, 0, 1)) > 0


def test_the_split_is_exact_seeded_and_computed_per_document():
    for n, fraction in ((2, 0.5), (3, 0.01), (1000, 0.05), (12345, 0.2)):
        split = DocumentSplit(n, fraction, 7)
        assert sorted(split.permute(np.arange(n, dtype=np.uint64)).tolist()) == list(range(n))  # a bijection
        whole = split.is_validation(0, n)
        assert whole.sum() == split.n_val == min(n - 1, max(1, round(n * fraction)))
        assert np.array_equal(np.concatenate([split.is_validation(a, min(n, a + 97) - a)
                                              for a in range(0, n, 97)]), whole)  # unit by unit = at once
    assert not np.array_equal(split_documents(1000, 0.2, 3), split_documents(1000, 0.2, 4))


# ----------------------------------------------------------------------------- races and reruns (small corpora)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    (root / "c.jsonl").write_text("".join(json.dumps({"text": f"document number {i} of forty\n"}) + "\n"
                                          for i in range(40)))
    tok = train_tokenizer([f"document number {i} of forty\n" for i in range(40)], root / "tok.model", 300)
    return root, DataConfig(corpus=str(root / "c.jsonl"), tokenizer=tok.path)


def test_another_prepare_installing_first_is_reused_not_waited_for(small, tmp_path):
    root, cfg = small
    inner = []

    def say(message):  # the other prepare of the same inputs runs to completion while this one is mid-way
        if message.startswith("work units 1/") and not inner:
            inner.append(prepare(cfg, tmp_path / "out", 0, workers=1, unit_bytes=200))

    got = prepare(cfg, tmp_path / "out", 0, workers=1, unit_bytes=200, say=say)
    assert inner and not inner[0]["reused"] and got["reused"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no partial dir brought back to life


def test_a_lone_document_cut_survives_a_failure_before_the_merge(small, tmp_path, monkeypatch):
    import photon_jax.data.preparation.prepare as prepare_module

    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "doc.txt").write_text("".join(f"line {i} of the lone document\n" for i in range(30)))
    cfg = DataConfig(corpus=f"{tmp_path / 'empty.txt'},{tmp_path / 'doc.txt'}", tokenizer=small[1].tokenizer,
                     validation_fraction=0.25)
    clean = prepare(cfg, tmp_path / "clean", 0, workers=1, unit_bytes=20)
    real = prepare_module.merge_units
    monkeypatch.setattr(prepare_module, "merge_units", lambda *a: (_ for _ in ()).throw(OSError("killed")))
    with pytest.raises(OSError):
        prepare(cfg, tmp_path / "out", 0, workers=1, unit_bytes=20)
    monkeypatch.setattr(prepare_module, "merge_units", real)
    again = prepare(cfg, tmp_path / "out", 0, workers=1, unit_bytes=20)
    assert again["splits"] == clean["splits"] and again["documents"] == 2
    assert (tmp_path / "out" / "validation" / "documents.txt").read_text() == "doc.txt#validation\n"


def test_force_rebuilds_damaged_data_of_the_same_inputs(small, tmp_path):
    from photon_jax.data.loading.packing import SplitSource
    from photon_jax.errors import UserError

    root, cfg = small
    prepare(cfg, tmp_path / "out", 0, workers=1)
    (tmp_path / "out" / "train" / "lengths.npy").write_bytes(b"garbage")
    with pytest.raises(UserError, match="run photon-jax prepare --force"):
        SplitSource(tmp_path / "out", "train")
    assert not prepare(cfg, tmp_path / "out", 0, workers=1, overwrite=True)["reused"]
    assert len(SplitSource(tmp_path / "out", "train")) > 0


def test_a_previous_runs_error_does_not_stop_a_multi_process_rerun(small, tmp_path):
    import threading

    root, cfg = small
    results = {}

    def process(index):
        results[index] = prepare(cfg, tmp_path / "out", 0, workers=1, unit_bytes=200, process_index=index,
                                 process_count=2)

    first = threading.Thread(target=process, args=(1,))  # creates the partial dir, then waits for the tokenizer
    first.start()
    while not list(tmp_path.glob(".out.partial-*")):
        time.sleep(0.01)
    stale = next(tmp_path.glob(".out.partial-*")) / "error.txt"
    stale.write_text("cannot read c.jsonl: Stale file handle\n")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))  # a failure of an earlier run
    process(0)
    first.join(60)
    assert results[0]["documents"] == 40 and results[1]["merged"] is False
