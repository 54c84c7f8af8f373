"""End-to-end training on the bundled Shakespeare corpus: loss falls, resume is exact, bad input is refused."""

import json
import os
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import use_one_device

from photon_jax.cli.main import main
from photon_jax.config import DataConfig, load_config
from photon_jax.data.preparation.prepare import prepare
from photon_jax.errors import UserError
from photon_jax.runs import checkpoint as ckpt
from photon_jax.train.loop import train

VOCAB = 512
# Every run of a preset has the same schedule (train.steps sets the learning-rate decay, a constant of the
# compiled step), so the tests that stop early (stop_after) reuse the programs the loss test compiled
# (persistent compilation cache, tests/conftest.py) instead of compiling their own.
STEPS = 40


@pytest.fixture(scope="module")
def shakespeare_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "shakespeare"
    prepare(DataConfig(corpus="shakespeare"), out, VOCAB)
    return out


def small_cfg(preset, data_dir, *extra):
    """A tiny model of the preset's family on real text, one device, a STEPS-step schedule."""
    return load_config(preset=preset, overrides=[
        f"data.data_dir={data_dir}", f"model.vocab_size={VOCAB}", "model.width=64", "model.ffn_width=128",
        "data.seq_len=64", "train.batch_size=8", "train.warmup_steps=5", "train.learning_rate=3e-3",
        "train.log_every=5", "train.eval_every=1000", "train.eval_batches=4", "train.checkpoint_every=1000",
        f"train.steps={STEPS}", "mesh.data=1", *extra])


@pytest.mark.parametrize("preset", ["photon-tiny", "block-tiny", "vanilla-tiny"])
def test_training_lowers_validation_loss(preset, shakespeare_dir, tmp_path, monkeypatch):
    use_one_device(monkeypatch)
    cfg = small_cfg(preset, shakespeare_dir)

    summary = train(cfg, tmp_path / "run", quiet=True)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["token_loss"] for r in records if r["split"] == "train"]
    assert losses[-1] < losses[0] - 0.5, losses
    assert summary["validation"]["token_loss"] < np.log(VOCAB) - 1.0
    assert 0 < summary["validation"]["bits_per_byte"] < 8
    assert (tmp_path / "run" / "config.json").is_file()
    assert list((tmp_path / "run" / "tensorboard").iterdir())


def _final_params(workdir):
    manager = ckpt.make_manager(workdir, async_save=False)
    step = manager.latest_step()
    restored = manager.restore(step)
    manager.close()
    return step, restored["state"]["params"]


@pytest.mark.slow
def test_resume_is_bitwise_exact(shakespeare_dir, tmp_path, monkeypatch):
    """8 steps straight = 4 steps, a restart from the checkpoint, 4 more: every logged loss and the final
    parameters, bit for bit."""
    use_one_device(monkeypatch)
    cfg = small_cfg("photon-tiny", shakespeare_dir, "train.log_every=1")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train(cfg, straight, quiet=True, stop_after=8)["step"] == 8
    first = train(cfg, resumed, quiet=True, stop_after=4)
    assert first["step"] == 4
    second = train(cfg, resumed, quiet=True, stop_after=4)
    assert second["step"] == 8
    loss = lambda d: [json.loads(x)["loss"] for x in (d / "metrics.jsonl").read_text().splitlines()  # noqa: E731
                      if json.loads(x)["split"] == "train"]
    assert loss(straight) == loss(resumed)
    step_a, params_a = _final_params(straight)
    step_b, params_b = _final_params(resumed)
    assert step_a == step_b == 8
    for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_sigterm_saves_and_resumes(shakespeare_dir, tmp_path, monkeypatch):
    use_one_device(monkeypatch)
    import signal

    cfg = small_cfg("photon-tiny", shakespeare_dir, "train.log_every=1")
    calls = {"n": 0}
    from photon_jax.data.loading import pipeline

    real = pipeline.train_iterator

    def iterator_that_signals(*args, **kwargs):
        it = real(*args, **kwargs)
        original_next = it.__next__

        class Wrapped:
            def __next__(self):
                calls["n"] += 1
                if calls["n"] == 4:
                    os.kill(os.getpid(), signal.SIGTERM)
                return original_next()

            def __getattr__(self, name):
                return getattr(it, name)

        return Wrapped()

    monkeypatch.setattr(pipeline, "train_iterator", iterator_that_signals)
    summary = train(cfg, tmp_path / "run", quiet=True)
    assert summary["stopped_by"] == "SIGTERM" and summary["step"] == 4
    monkeypatch.setattr(pipeline, "train_iterator", real)
    assert train(cfg, tmp_path / "run", quiet=True, stop_after=6)["step"] == 10


def _cli(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def test_bad_training_inputs(shakespeare_dir, tmp_path, capsys, monkeypatch):
    use_one_device(monkeypatch)
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    code, err = _cli(capsys, "train", "--workdir", str(tmp_path / "w1"), f"data.corpus={empty}", "train.steps=1")
    assert code == 2 and len(err) == 1 and "empty" in err[0].lower()

    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    code, err = _cli(capsys, "train", "--workdir", str(tmp_path / "w2"), f"data.corpus={binary}", "train.steps=1")
    assert code == 2 and len(err) == 1 and "utf-8" in err[0].lower()

    # the prepared data's tokenizer has VOCAB entries, the model wants another size
    code, err = _cli(capsys, "train", "--workdir", str(tmp_path / "w3"), f"data.data_dir={shakespeare_dir}",
                     "model.vocab_size=1000", "train.steps=1")
    assert code == 2 and len(err) == 1 and "1000" in err[0] and str(VOCAB) in err[0]

    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err = _cli(capsys, "train", "--workdir", str(blocker / "sub"), "train.steps=1")
    assert code == 2 and len(err) == 1 and "not writable" in err[0]


def test_corrupted_checkpoint_is_refused_not_reinitialised(shakespeare_dir, tmp_path, capsys, monkeypatch):
    use_one_device(monkeypatch)
    cfg = small_cfg("photon-tiny", shakespeare_dir)
    run = tmp_path / "run"
    train(cfg, run, quiet=True, stop_after=3)
    state_dir = run / "checkpoints" / "3" / "state"
    victims = [p for p in state_dir.rglob("*") if p.is_file() and p.stat().st_size > 0]
    assert victims
    for p in victims:
        p.write_bytes(b"\x00garbage" * 3)
    before = sorted(str(p) for p in run.rglob("*"))
    with pytest.raises(UserError, match="checkpoint"):
        train(cfg, run, quiet=True, stop_after=3)
    assert sorted(str(p) for p in run.rglob("*")) == before  # nothing written, nothing deleted
    # and a workdir trained with another model is refused through the CLI with one line
    code, err = _cli(capsys, "train", "--workdir", str(run), "--preset", "vanilla-tiny",
                     f"data.data_dir={shakespeare_dir}", f"model.vocab_size={VOCAB}", "mesh.data=1")
    assert code == 2 and len(err) == 1 and "another model" in err[0]
    assert Path(run / "checkpoints" / "3").is_dir()
