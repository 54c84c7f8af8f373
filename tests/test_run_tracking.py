"""Where a step's time goes and where metrics go: jax.profiler traces of chosen training steps
(train.profile_steps) and of benchmarks (bench --profile), and Weights & Biases logging in offline mode."""

import gzip
import json
from pathlib import Path

import pytest
from conftest import prepare_few_plays

from photon_jax.cli.main import main

pytestmark = pytest.mark.usefixtures("fast_compile")
VOCAB = 384


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return prepare_few_plays(tmp_path_factory.mktemp("tracking"), VOCAB, plays=2)


def _train(workdir: Path, data_dir: Path, *extra: str) -> int:
    return main(["train", "--preset", "photon-tiny", "--workdir", str(workdir), f"data.data_dir={data_dir}",
                 f"model.vocab_size={VOCAB}", "model.width=32", "model.ffn_width=64", "data.seq_len=32",
                 "train.batch_size=8", "train.eval_batches=1", "train.log_every=1", *extra])


def _wandb_bytes(workdir: Path) -> bytes:
    runs = sorted((workdir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert runs, list((workdir / "wandb").iterdir())
    return b"".join(p.read_bytes() for p in runs)


@pytest.mark.slow
def test_profiled_steps_and_wandb_offline(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    workdir = tmp_path / "run"
    assert _train(workdir, data_dir, "train.steps=3", "train.profile_steps=2:2", "train.wandb_project=photon-test",
                  "train.wandb_mode=offline") == 0

    # the trace of steps 2 and 3, openable by the TensorBoard profile plugin, and a memory profile
    profile = workdir / "tensorboard" / "plugins" / "profile"
    traces = list(profile.glob("*/*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0
    events = json.loads(gzip.decompress(next(profile.glob("*/*.trace.json.gz")).read_bytes()))["traceEvents"]
    steps = sorted({int(e["args"]["step_num"]) for e in events
                    if isinstance(e, dict) and e.get("name") == "train" and "step_num" in e.get("args", {})})
    assert steps == [2, 3]
    assert (workdir / "tensorboard" / "memory_step3.prof").stat().st_size > 0

    # every train record of metrics.jsonl went to the wandb run too (offline: written to its .wandb file)
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    logged = _wandb_bytes(workdir)
    train_records = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train_records] == [1, 2, 3]
    for record in train_records:
        assert json.dumps(record["token_loss"]).encode() in logged
    assert b"train/token_loss" in logged and b"validation/bits_per_byte" in logged

    # a resumed run logs into the same wandb run
    run_id = (workdir / "wandb_run_id").read_text()
    assert _train(workdir, data_dir, "train.steps=4", "train.wandb_project=photon-test",
                  "train.wandb_mode=offline") == 0
    assert (workdir / "wandb_run_id").read_text() == run_id
    assert all(run_id in p.name for p in (workdir / "wandb").glob("offline-run-*"))


def test_bench_profile_writes_a_trace(tmp_path, capsys):
    out = tmp_path / "profile"
    assert main(["bench", "train", "--models", "vanilla-tiny", "--steps", "1", "--warmup", "0", "--batch-size", "8",
                 "--seq-len", "32", "--profile", str(out), "--json"]) == 0
    assert list(out.glob("plugins/profile/*/*.xplane.pb"))


@pytest.mark.parametrize("override, message", [
    ("train.profile_steps=0:2", "expected START:COUNT"),
    ("train.profile_steps=2", "expected START:COUNT"),
    ("train.wandb_mode=sometimes", "train.wandb_mode must be online, offline or disabled"),
])
def test_bad_tracking_settings_are_one_line_exit_2(data_dir, tmp_path, override, message, capsys):
    assert _train(tmp_path / "run", data_dir, override) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
