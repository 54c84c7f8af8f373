"""Fault tolerance of training: kill -9 and resume, a kill during an asynchronous save, unreadable or
foreign checkpoints, SIGTERM, NaN/Inf, failed checkpoint writes, and a process dying in a multi-process run.

Every run trains a tiny vanilla model on three bundled plays on one CPU device. Child processes (a
real kill needs one) run the real CLI through tests/reliability_worker.py, compiled exactly like the
in-process runs and sharing their persistent compilation cache, so a run that was killed and resumed
is compared bit for bit with the module's reference run, which never was.
"""

import asyncio
import contextlib
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import prepare_two_corpora, tiny_overrides, use_one_device
from reliability_worker import compile_cache

from photon_jax.bench.prepare_bench import write_generated_corpus
from photon_jax.cli.main import main
from photon_jax.config import load_config
from photon_jax.data.loading import pipeline
from photon_jax.errors import UserError
from photon_jax.runs import checkpoint as ckpt
from photon_jax.train.loop import train

REPO = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "reliability_worker.py"
# a busy loop that ends by itself once its parent is gone (a killed run leaves no burner behind)
BURN = "import os\nparent = os.getppid()\nwhile os.getppid() == parent: pass"
VOCAB = 512
FINAL = 10  # resumed runs continue to this step; the reference has checkpoints at 2, 4, ..., FINAL


def overrides(data_dir, *extra):
    """A 1-layer vanilla model, 4 x 64 tokens a step, a checkpoint every 2 steps; the learning-rate
    schedule spans 1000 steps and runs stop early (stop_after, a kill, or a fault)."""
    return tiny_overrides(vocab=VOCAB, chunks=(4,), seq_mult=16) + [
        "model.family=vanilla", "model.num_layers=1", f"data.data_dir={data_dir}", "train.batch_size=4",
        "train.steps=1000", "train.warmup_steps=2", "train.learning_rate=1e-2", "train.log_every=1",
        "train.eval_every=1000", "train.eval_batches=1", "train.checkpoint_every=2", "train.keep_checkpoints=10",
        "mesh.data=1", *extra]


def config(data_dir, *extra):
    return load_config(overrides=overrides(data_dir, *extra))


@pytest.fixture(scope="module")
def env(tmp_path_factory, fast_compile):
    """Two prepared corpora with different tokenizers of the same size, and the compilation cache."""
    root = tmp_path_factory.mktemp("reliability")
    prepare_two_corpora(root, VOCAB)
    cache = tmp_path_factory.getbasetemp() / "jax_cache"
    with compile_cache(cache):
        yield SimpleNamespace(root=root, data=root / "data", other=root / "other", cache=cache)


@pytest.fixture(scope="module")
def reference(env):
    """The uninterrupted run: FINAL steps, every checkpoint kept."""
    run = env.root / "reference"
    with pytest.MonkeyPatch.context() as mp:
        use_one_device(mp)
        train(config(env.data), run, quiet=True, stop_after=FINAL)
    return run


@pytest.fixture(autouse=True)
def one_device(monkeypatch):
    use_one_device(monkeypatch)


# ----------------------------------------------------------------------------- helpers

def train_records(workdir):
    lines = (workdir / "metrics.jsonl").read_text().splitlines() if (workdir / "metrics.jsonl").exists() else []
    return [r for r in map(json.loads, lines) if r["split"] == "train"]


def logged_steps(workdir):
    return [r["step"] for r in train_records(workdir)]


def assert_losses_match_reference(workdir, reference):
    expected = {r["step"]: r["loss"] for r in train_records(reference)}
    records = train_records(workdir)
    assert records
    for r in records:  # every logged step, before and after the interruption, bit for bit
        assert r["loss"] == expected[r["step"]], (r["step"], r["loss"], expected[r["step"]])


def saved_state(workdir, step):
    manager = ocp.CheckpointManager(ckpt.checkpoint_dir(workdir))
    try:
        return manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore()))["state"]
    finally:
        manager.close()


def assert_same_tree(a, b):
    paths_a, leaves_a = zip(*jax.tree_util.tree_leaves_with_path(a))
    paths_b, leaves_b = zip(*jax.tree_util.tree_leaves_with_path(b))
    assert paths_a == paths_b
    for path, x, y in zip(paths_a, leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


def all_finite(tree):
    return all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(tree))


def copy_run(run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(run, out)
    return out


def listing(directory):
    return sorted((str(p), p.stat().st_size) for p in directory.rglob("*"))


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err.strip().splitlines()


def start_worker(env, log_dir, *cli_args, flags=()):
    """The real CLI in a child process (its own session, output to files so it never blocks on a pipe)."""
    out, err = open(log_dir / "worker.out", "w"), open(log_dir / "worker.err", "w")
    cmd = [sys.executable, str(WORKER), "--one-device", "--cache", str(env.cache), "--fast-compile", *flags,
           "--", *map(str, cli_args)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=err, start_new_session=True)
    proc.logs = (log_dir / "worker.out", log_dir / "worker.err")
    return proc


def wait_for(condition, proc, what, timeout=240.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            pytest.fail(f"worker exited with {proc.returncode} before {what}:\n{proc.logs[1].read_text()[-3000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"timed out waiting for {what}")


def poison_batches(monkeypatch, *numbers):
    """The training pipeline yields a NaN loss mask in the given batches (1-based): the loss and every
    gradient of that step are NaN, through the real model, loss and train step."""
    real = pipeline.train_iterator
    state = {"on": True}

    def wrapped(*args, **kwargs):
        it = real(*args, **kwargs)
        count = {"n": 0}

        class Iterator:
            def __next__(self):
                batch = next(it)
                count["n"] += 1
                if state["on"] and count["n"] in numbers:
                    batch = dict(batch, mask=np.full_like(batch["mask"], np.nan))
                return batch

            def __getattr__(self, name):
                return getattr(it, name)

        return Iterator()

    monkeypatch.setattr(pipeline, "train_iterator", wrapped)
    return state


# ----------------------------------------------------------------------------- kill -9

def test_sigkill_mid_run_resumes_bitwise_from_the_last_checkpoint(env, reference, tmp_path):
    run = tmp_path / "run"
    proc = start_worker(env, tmp_path, "train", "--quiet", "--workdir", run, *overrides(env.data),
                        flags=["--step-delay", "0.15"])

    def past_a_checkpoint():
        steps, logged = ckpt.committed_steps(run), logged_steps(run)
        return bool(steps and logged and logged[-1] > steps[-1])

    wait_for(past_a_checkpoint, proc, "a step after the first checkpoint")
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    killed_at, last = logged_steps(run)[-1], ckpt.committed_steps(run)[-1]
    assert 2 <= last < killed_at and last + 2 <= FINAL, (last, killed_at)

    summary = train(config(env.data), run, quiet=True, stop_after=FINAL - last)
    assert summary["step"] == FINAL
    # the killed run logged 1..killed_at; the restart continued from the checkpoint, not from scratch
    assert logged_steps(run) == list(range(1, killed_at + 1)) + list(range(last + 1, FINAL + 1))
    assert_losses_match_reference(run, reference)
    assert_same_tree(saved_state(run, FINAL), saved_state(reference, FINAL))


def test_sigkill_during_an_async_save_restores_the_previous_checkpoint(env, reference, tmp_path, capsys):
    """The worker's save of step 4 blocks in orbax's background commit (after its temporary directory
    and array writes started); the kill leaves what orbax leaves: 4.orbax-checkpoint-tmp, no commit."""
    run = tmp_path / "run"
    proc = start_worker(env, tmp_path, "train", "--quiet", "--workdir", run, *overrides(env.data),
                        flags=["--hang-save-step", "4"])
    wait_for((run / "saving-4").exists, proc, "the save of step 4 to start")
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert ckpt.committed_steps(run) == [2]
    unfinished = ckpt.unfinished_saves(run)
    assert [p.name.split(".")[0] for p in unfinished] == ["4"] and ckpt.TMP_MARKER in unfinished[0].name
    assert not (unfinished[0] / ckpt.COMMIT_FILE).exists()

    capsys.readouterr()
    summary = train(config(env.data), run, quiet=True, stop_after=FINAL - 2)
    err = capsys.readouterr().err
    assert "ignoring unfinished checkpoint" in err and unfinished[0].name in err
    assert summary["step"] == FINAL
    assert logged_steps(run)[-(FINAL - 2):] == list(range(3, FINAL + 1))
    assert_losses_match_reference(run, reference)
    assert_same_tree(saved_state(run, FINAL), saved_state(reference, FINAL))
    assert not ckpt.unfinished_saves(run)  # orbax replaced the temporary directory when it saved step 4 again


def test_a_step_directory_without_commit_marker_is_never_loaded(env, reference, tmp_path, capsys):
    """A final-named step directory whose commit never happened (e.g. copied half way): refused, not loaded."""
    run = copy_run(reference, tmp_path)
    partial = run / "checkpoints" / str(FINAL + 2)
    shutil.copytree(run / "checkpoints" / str(FINAL), partial)
    (partial / ckpt.COMMIT_FILE).unlink()
    meta = json.loads((partial / "_CHECKPOINT_METADATA").read_text())
    meta.pop("commit_timestamp_nsecs")
    (partial / "_CHECKPOINT_METADATA").write_text(json.dumps(meta))
    shutil.rmtree(partial / "state" / "d")
    before = listing(run)
    with pytest.raises(UserError, match=rf"checkpoints/{FINAL + 2} was not completely written"):
        train(config(env.data), run, quiet=True, stop_after=1)
    code, err = cli(capsys, "generate", "--workdir", run, "--prompt", "ROMEO.", "--max-new-tokens", "2")
    assert code == 2 and len(err) == 1 and "was not completely written" in err[0], err
    assert listing(run) == before


# ----------------------------------------------------------------------------- unreadable or foreign checkpoints

@pytest.mark.parametrize("item", ["state", "meta"])
def test_truncated_checkpoint_files_are_refused_not_reinitialised(env, reference, tmp_path, capsys, item):
    run = copy_run(reference, tmp_path)
    victims = [p for p in (run / "checkpoints" / str(FINAL) / item).rglob("*")
               if p.is_file() and p.stat().st_size > 1 and p.name != ckpt.COMMIT_FILE]
    assert victims
    for path in victims:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    before = listing(run)
    with pytest.raises(UserError, match=rf"checkpoints/{FINAL} is unreadable"):
        train(config(env.data), run, quiet=True, stop_after=1)
    for argv in (["eval", "--workdir", run, "--max-batches", "1"],
                 ["generate", "--workdir", run, "--prompt", "ROMEO.", "--max-new-tokens", "2"]):
        code, err = cli(capsys, *argv)
        assert code == 2 and len(err) == 1 and f"checkpoints/{FINAL} is unreadable" in err[0], (argv, err)
    assert listing(run) == before  # nothing written, nothing deleted, no fresh start


def _edit_saved_config(run, step, edit):
    path = run / "checkpoints" / str(step) / "config" / "metadata"
    saved = json.loads(path.read_text())
    edit(saved)
    path.write_text(json.dumps(saved))


def test_tokenizer_mismatch_is_refused(env, reference, tmp_path, capsys):
    run = copy_run(reference, tmp_path)
    # train: the same work directory with data prepared by another tokenizer (same vocabulary size)
    with pytest.raises(UserError, match="another tokenizer"):
        train(config(env.other), run, quiet=True, stop_after=1)
    # eval / generate: the data directory the checkpoint names now holds another tokenizer
    data = tmp_path / "data"
    shutil.copytree(env.data, data)
    mine = json.loads((data / "manifest.json").read_text())["tokenizer"]["file"]
    theirs = json.loads((env.other / "manifest.json").read_text())["tokenizer"]["file"]
    shutil.copy(env.other / theirs, data / mine)
    _edit_saved_config(run, FINAL, lambda c: c["data"].update(data_dir=str(data)))
    for argv in (["eval", "--workdir", run, "--max-batches", "1"],
                 ["generate", "--workdir", run, "--prompt", "ROMEO.", "--max-new-tokens", "2"]):
        code, err = cli(capsys, *argv)
        assert code == 2 and len(err) == 1 and "is not the one the checkpoint was trained with" in err[0], err


@pytest.mark.parametrize("width", [64, 16])
def test_checkpoint_of_another_model_is_refused_by_eval_and_generate(env, reference, tmp_path, capsys, width):
    """The saved config says one model, the arrays hold another (larger and smaller): one line, no
    traceback from orbax's reader threads (they used to print 'Event loop is closed' tracebacks)."""
    run = copy_run(reference, tmp_path)
    _edit_saved_config(run, FINAL, lambda c: c["model"].update(width=width, ffn_width=2 * width))
    for argv in (["eval", "--workdir", run, "--max-batches", "1"],
                 ["generate", "--workdir", run, "--prompt", "ROMEO.", "--max-new-tokens", "2"]):
        code, err = cli(capsys, *argv)
        assert code == 2 and len(err) == 1 and "not compatible with the stored shape" in err[0], err


# ----------------------------------------------------------------------------- SIGTERM

def test_sigterm_checkpoints_exits_0_and_the_next_start_resumes(env, reference, tmp_path, capsys):
    run = tmp_path / "run"
    extra = ["train.checkpoint_every=1000"]  # the only checkpoint is the one SIGTERM asks for
    proc = start_worker(env, tmp_path, "train", "--workdir", run, *overrides(env.data, *extra),
                        flags=["--step-delay", "0.15"])
    wait_for(lambda: len(logged_steps(run)) >= 3, proc, "three training steps")
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, proc.logs[1].read_text()[-3000:]
    assert time.monotonic() - sent < 30
    said = re.search(r"received SIGTERM: checkpoint saved at step (\d+)", proc.logs[0].read_text())
    assert said, proc.logs[0].read_text()
    stopped = int(said[1])
    assert ckpt.committed_steps(run) == [stopped] and logged_steps(run)[-1] == stopped
    assert "Traceback" not in proc.logs[1].read_text()

    summary = train(config(env.data, *extra), run, quiet=True, stop_after=FINAL - stopped)
    assert summary["step"] == FINAL and logged_steps(run) == list(range(1, FINAL + 1))
    assert_losses_match_reference(run, reference)
    assert_same_tree(saved_state(run, FINAL)["params"], saved_state(reference, FINAL)["params"])


def test_sigterm_during_the_compile_ends_at_its_return_with_one_line_and_nothing_saved(env, reference, tmp_path):
    """A handler cannot run inside an XLA compile (the worker holds SIGTERM blocked for 5 s after it, as the
    compile would): the process ends when it returns, exit 0, one line, no checkpoint; the next start works."""
    run = tmp_path / "run"
    proc = start_worker(env, tmp_path, "train", "--workdir", run, *overrides(env.data), flags=["--compile-delay", "5"])
    wait_for(lambda: (run / "compiling").exists(), proc, "the compile")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, proc.logs[1].read_text()[-3000:]
    assert proc.logs[0].read_text().strip().splitlines() == [
        "received SIGTERM while compiling the train step: no checkpoint written; rerun the same command to resume"]
    assert "Traceback" not in proc.logs[1].read_text()
    assert not ckpt.committed_steps(run) and not ckpt.unfinished_saves(run)
    summary = train(config(env.data), run, quiet=True, stop_after=2)
    assert summary["step"] == 2
    assert_losses_match_reference(run, reference)


def test_sigterm_while_train_prepares_its_data_keeps_the_units_and_the_next_start_works(env, tmp_path):
    """`train` on an unprepared corpus, 2 prepare workers: SIGTERM once a work unit is finished stops the
    workers, prints one line naming the kept units, exits 0 without a checkpoint; the next start resumes the
    preparation (reusing them) and trains."""
    corpus = write_generated_corpus(tmp_path / "corpus.jsonl", 12 << 20)
    data = tmp_path / "data"
    extra = [f"data.corpus={corpus}", f"data.tokenizer={env.data / 'tokenizer.model'}", "data.prepare_workers=2",
             "data.prepare_unit_mb=0.5"]
    run = tmp_path / "run"
    proc = start_worker(env, tmp_path, "train", "--workdir", run, *overrides(data, *extra))
    wait_for(lambda: any(tmp_path.glob(".data.partial-*/units/[!.]*/meta.json")), proc, "a finished work unit")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, proc.logs[1].read_text()[-3000:]
    lines = proc.logs[0].read_text().strip().splitlines()
    said = re.fullmatch(r"received SIGTERM while preparing data: (\d+) of (\d+) work units finished, kept in (\S+); "
                        r"rerun the same command to resume", lines[-1] if lines else "")
    assert said and int(said[1]) >= 1 and all(line.startswith("preparing ") for line in lines[:-1]), lines
    assert "Traceback" not in proc.logs[1].read_text() and not ckpt.committed_steps(run)
    kept = {p: p.stat().st_mtime_ns for p in Path(said[3]).glob("units/[!.]*/meta.json")}
    assert len(kept) == int(said[1]) < int(said[2]) and not data.exists()
    summary = train(config(data, *extra), run, quiet=True, stop_after=1)
    assert summary["step"] == 1
    assert all((data / p.relative_to(p.parents[2])).stat().st_mtime_ns == t for p, t in kept.items())


# ----------------------------------------------------------------------------- NaN / Inf

def test_nonfinite_step_is_skipped_and_counted(env, reference, tmp_path, monkeypatch):
    poison_batches(monkeypatch, 3)
    run = tmp_path / "run"
    train(config(env.data, "train.checkpoint_every=1"), run, quiet=True, stop_after=4)
    records = {r["step"]: r for r in train_records(run)}
    assert [records[s]["skipped"] for s in (1, 2, 3, 4)] == [0, 0, 1, 1]
    assert [records[s]["finite"] for s in (1, 2, 3, 4)] == [1, 1, 0, 1]
    assert np.isnan(records[3]["loss"]) and np.isfinite(records[4]["loss"])
    expected = {r["step"]: r["loss"] for r in train_records(reference)}
    assert [records[s]["loss"] for s in (1, 2)] == [expected[1], expected[2]]
    s2, s3, s4 = (saved_state(run, s) for s in (2, 3, 4))
    assert_same_tree(s3["params"], s2["params"])  # the update of step 3 was dropped, optimizer state too
    assert_same_tree(s3["opt_state"], s2["opt_state"])
    assert int(s3["step"]) == 3 and int(s3["skipped"]) == 1 and int(s4["skipped"]) == 1
    assert all_finite(s4) and not np.array_equal(*(np.asarray(jax.tree.leaves(s["params"])[0]) for s in (s3, s4)))


def test_nonfinite_halt_is_one_line_exit_2_and_keeps_the_last_good_checkpoint(env, tmp_path, monkeypatch, capsys):
    """log_every=10: the halt must not wait for a logging step (it used to, and the NaN state of step 4
    was checkpointed before the halt was noticed at step 6)."""
    poisoned = poison_batches(monkeypatch, 3)
    run = tmp_path / "run"
    extra = ["train.nonfinite=halt", "train.log_every=10"]
    code, err = cli(capsys, "train", "--quiet", "--workdir", run, *overrides(env.data, *extra))
    assert code == 2 and len(err) == 1, err
    assert "non-finite loss or gradient at step 3" in err[0] and "checkpoint of step 2 is kept" in err[0]
    assert ckpt.committed_steps(run) == [2] and not ckpt.unfinished_saves(run)
    assert all_finite(saved_state(run, 2))
    poisoned["on"] = False
    summary = train(config(env.data, *extra), run, quiet=True, stop_after=2)
    assert summary["step"] == 4 and ckpt.committed_steps(run) == [2, 4]


def test_skip_mode_halts_after_max_consecutive_skips_keeping_the_last_good_checkpoint(
        env, reference, tmp_path, monkeypatch, capsys):
    """Every batch from the 3rd on is poisoned: steps 3, 4, 5 are skipped and the run halts (one line, exit 2)
    instead of running on forever; the checkpoint of step 4 holds step 2's parameters, and a transient
    NaN between good steps (test above) never counts towards the limit."""
    poisoned = poison_batches(monkeypatch, *range(3, 1000))
    run = tmp_path / "run"
    extra = ["train.max_consecutive_skips=3", "train.log_every=10"]
    code, err = cli(capsys, "train", "--quiet", "--workdir", run, *overrides(env.data, *extra))
    assert code == 2 and len(err) == 1, err
    assert "steps 3-5: 3 consecutive non-finite" in err[0] and "checkpoint of step 4 is kept" in err[0], err
    assert ckpt.committed_steps(run) == [2, 4] and not ckpt.unfinished_saves(run)
    s2, s4 = saved_state(run, 2), saved_state(run, 4)
    assert all_finite(s4) and int(s4["skipped"]) == 2
    assert_same_tree(s4["params"], s2["params"])
    assert_same_tree(s2["params"], saved_state(reference, 2)["params"])
    poisoned["on"] = False
    summary = train(config(env.data, *extra), run, quiet=True, stop_after=2)
    assert summary["step"] == 6 and ckpt.committed_steps(run) == [2, 4, 6]


def test_a_nonfinite_state_is_never_saved(env, reference, tmp_path):
    """Whatever produced it (an overflowing update passes the loss/gradient check), a state with NaN/Inf
    is refused by the checkpoint writer itself."""
    run = copy_run(reference, tmp_path)
    state = saved_state(run, FINAL)
    leaf = np.array(state["params"]["embed"]["embedding"])
    leaf[0, 0] = np.inf
    state["params"]["embed"]["embedding"] = leaf
    manager = ckpt.make_manager(run)
    with pytest.raises(UserError, match=rf"step {FINAL + 2} has NaN/Inf values.*step {FINAL}\) is kept"):
        ckpt.save(manager, FINAL + 2, state, {}, config(env.data), {})
    ckpt.finish(manager)
    assert ckpt.committed_steps(run)[-1] == FINAL and not ckpt.unfinished_saves(run)


# ----------------------------------------------------------------------------- failed writes

def _fail_json_writes(monkeypatch, step, code):
    """orbax's background writer of the JSON items raises OSError(code) for `step` (the disk filled up)."""
    from orbax.checkpoint._src.handlers import json_checkpoint_handler as handler

    real = handler.JsonCheckpointHandler._save_fn

    async def save_fn(self, item, directory):
        if Path(str(directory)).parent.name.split(".")[0] == str(step):
            raise OSError(code, os.strerror(code), str(directory / "metadata"))
        return await real(self, item, directory)

    monkeypatch.setattr(handler.JsonCheckpointHandler, "_save_fn", save_fn)


def _fail_step_directory(monkeypatch, step, code):
    """Creating the step's temporary directory (synchronous, in manager.save) raises OSError(code)."""
    from orbax.checkpoint._src.path import atomicity

    real = atomicity.AtomicRenameTemporaryPath.create

    async def create(self, *args, **kwargs):
        if self.get_final().name == str(step):
            raise OSError(code, os.strerror(code), str(self.get()))
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "create", create)


@pytest.mark.parametrize("inject, code", [(_fail_json_writes, errno.ENOSPC), (_fail_step_directory, errno.EROFS)])
def test_failed_checkpoint_write_is_one_line_and_the_previous_checkpoint_resumes(
        env, reference, tmp_path, monkeypatch, capsys, inject, code):
    run = tmp_path / "run"
    monkeypatch.setattr(ckpt._DropStorageTracebacks, "reported", False)  # restored after the test
    with monkeypatch.context() as patch:
        inject(patch, 4, code)
        code_, err = cli(capsys, "train", "--quiet", "--workdir", run, *overrides(env.data))
    assert code_ == 2 and len(err) == 1, err
    assert os.strerror(code) in err[0] and "the last complete checkpoint (step 2) is kept" in err[0], err
    assert ckpt.committed_steps(run) == [2]
    summary = train(config(env.data), run, quiet=True, stop_after=2)
    assert summary["step"] == 4
    assert_same_tree(saved_state(run, 4), saved_state(reference, 4))


@contextlib.contextmanager
def busy_cores(count=2):
    """Processes that keep `count` cores busy (the late-noise race of a failed save shows under load)."""
    procs = [subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(count)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("where, code", [("commit", "ENOSPC"), ("commit", "EROFS"), ("mkdir", "ENOSPC"),
                                         ("mkdir", "EROFS")])
def test_failed_write_in_a_real_process_prints_one_line_and_exits_promptly(env, tmp_path, where, code):
    """The same failures in a child process, with both cores kept busy: nothing but the error on stderr
    (orbax logs every failed writer thread with a traceback, its writer coroutines were never awaited,
    and tensorstore I/O finishing after orbax closed its event loop raised 'Event loop is closed'), and
    no wait for orbax's commit threads (after a failed mkdir they used to hold the exit for 300 s).
    The cores are kept busy from the first step on (the worker waits for them there, started and compiled):
    both checkpoints, the failure and the exit run under load. scripts/stress_failed_writes.py repeats these
    20 times each."""
    run = tmp_path / "run"
    proc = start_worker(env, tmp_path, "train", "--quiet", "--workdir", run, *overrides(env.data),
                        flags=["--fail-save-step", "4", "--fail-in", where, "--fail-errno", code,
                               "--hold-at-batch", "1"])
    wait_for((run / "holding").exists, proc, "the worker to be ready for its first step")
    with busy_cores():
        (run / "go").touch()
        assert proc.wait(timeout=120) == 2, proc.logs[1].read_text()[-3000:]
    lines = proc.logs[1].read_text().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("photon-jax: error: could not write a checkpoint"), lines
    assert os.strerror(getattr(errno, code)) in lines[0] and "(step 2) is kept" in lines[0]


def test_late_callbacks_into_a_closed_event_loop_are_dropped_and_nothing_else(capsys):
    """What tensorstore does when its I/O finishes after orbax closed the loop awaiting it: the completion
    callback's call_soon_threadsafe raises, printed through sys.excepthook. That exact error is dropped
    (hook installed by make_manager); the same message raised elsewhere, and other errors, still print."""
    ckpt._drop_closed_loop_noise()
    loop = asyncio.new_event_loop()
    loop.close()

    def raised(fn):
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            return e
        raise AssertionError("no error")

    def elsewhere():
        raise RuntimeError("Event loop is closed")

    late = raised(lambda: loop.call_soon_threadsafe(print))
    sys.excepthook(type(late), late, late.__traceback__)
    assert capsys.readouterr().err == ""
    for error in (raised(elsewhere), raised(lambda: int("x"))):
        sys.excepthook(type(error), error, error.__traceback__)
        assert type(error).__name__ in capsys.readouterr().err


# ----------------------------------------------------------------------------- several processes

@pytest.mark.parametrize("to", ["process 1", "both"])
def test_sigterm_to_one_or_both_processes_stops_both_at_the_same_step(env, tmp_path, to):
    """launch/local.py, 2 processes x 1 device: SIGTERM to process 1 alone, or to both (the launcher forwards
    its SIGTERM to each): every process stops at the same step boundary and they save that step together
    (a collective save: it commits only when both write the same step), exit 0; checkpoint_every=1000, so
    that save is the only checkpoint."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "launch.local", "-n", "2", "-k", "1", "--grace", "60", "--timeout", "400", "--",
           "python", str(WORKER), "--cache", str(env.cache), "--fast-compile", "--step-delay", "0.15", "--write-pid",
           "--", "train", "--workdir", str(run), *overrides(env.data, "mesh.data=2", "train.checkpoint_every=1000")]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while len(logged_steps(run)) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None and len(logged_steps(run)) >= 3, proc.communicate(timeout=60)
    if to == "both":
        proc.send_signal(signal.SIGTERM)
    else:
        os.kill(int((run / "pid-1").read_text()), signal.SIGTERM)
    out, err = proc.communicate(timeout=240)
    # the launcher itself reports a SIGTERM it received as 128 + 15, after its processes ended
    assert proc.returncode == (143 if to == "both" else 0), out[-3000:] + err[-3000:]
    assert "exited with status" not in err, err[-2000:]
    reason = "SIGTERM" if to == "both" else r"SIGTERM \(on another process\)"
    said = re.findall(rf"\[0\] received {reason}: checkpoint saved at step (\d+)", out)
    assert len(said) == 1, out[-3000:]
    stopped = int(said[0])
    assert ckpt.committed_steps(run) == [stopped] == [logged_steps(run)[-1]] and not ckpt.unfinished_saves(run)
    assert json.loads((run / "summary.json").read_text())["step"] == stopped


def test_a_process_dying_in_a_multiprocess_run_stops_the_others(env, tmp_path):
    """launch/local.py, 2 processes x 1 device training together; process 1 is SIGKILLed at its 6th
    batch (the checkpoint of step 2 is committed by then: the save of step 4 waited for it). The
    launcher and process 0 (blocked in a collective with the dead peer; the launcher SIGTERMs it, then
    SIGKILLs it after --grace) exit non-zero within 60 s, and the last complete checkpoint still resumes,
    on one device."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "launch.local", "-n", "2", "-k", "1", "--grace", "5", "--timeout", "400", "--",
           "python", str(WORKER), "--cache", str(env.cache), "--fast-compile", "--kill-at-batch", "6",
           "--kill-process", "1", "--", "train", "--quiet", "--workdir", str(run),
           *overrides(env.data, "mesh.data=2")]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=480)
    ended = time.time()
    assert proc.returncode != 0, out[-2000:] + err[-2000:]
    assert "process 1 exited with status -9" in err, err[-2000:]
    died = float((run / "killed-1").read_text())
    assert ended - died < 60, ended - died
    steps = ckpt.committed_steps(run)
    assert steps and steps[-1] in (2, 4), steps
    summary = train(config(env.data), run, quiet=True, stop_after=1)
    assert summary["step"] == steps[-1] + 1
