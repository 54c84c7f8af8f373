"""The train loop as steps plus hooks: each hook runs on its own period and after the last step, in the
order registered; closing reaches every hook even when one fails; a caller's hook sees the real run's
steps and metrics, and the standard hooks' output is unchanged by it."""

import json

import numpy as np
import pytest
from conftest import prepare_few_plays, tiny_overrides, use_one_device

from photon_jax.config import load_config
from photon_jax.errors import UserError
from photon_jax.train.hooks import Hook, Hooks
from photon_jax.train.loop import train

pytestmark = pytest.mark.usefixtures("fast_compile")
VOCAB = 384  # the plays need at least 335 pieces (256 bytes + their characters)


class Recorder(Hook):
    def __init__(self, name, log, every=1, fail_on_close=False):
        self.name, self.log, self.every, self.fail_on_close = name, log, every, fail_on_close

    def before(self, step):
        self.log.append((self.name, "before", step))

    def after(self, step, end, metrics):
        self.log.append((self.name, "after", step))

    def finish(self, step):
        self.log.append((self.name, "finish", step))

    def close(self):
        self.log.append((self.name, "close", None))
        if self.fail_on_close:
            raise UserError(f"{self.name} failed to close")


def drive(hooks, start, end):
    for step in range(start + 1, end + 1):
        hooks.before(step)
        hooks.after(step, end, {})
    hooks.finish(end)


def test_each_hook_runs_on_its_period_and_after_the_last_step_in_registration_order():
    log, seen = [], []
    hooks = Hooks()
    hooks.add(Recorder("a", log, every=3))
    hooks.add(Recorder("b", log, every=0))  # only after the last step
    hooks.add(lambda step, metrics: seen.append(step), every=2)
    drive(hooks, start=2, end=7)  # a resumed run: steps 3..7
    assert [s for name, what, s in log if name == "a" and what == "after"] == [3, 6, 7]
    assert [s for name, what, s in log if name == "b" and what == "after"] == [7]
    assert seen == [4, 6, 7]
    assert [s for name, what, s in log if name == "b" and what == "before"] == [3, 4, 5, 6, 7]
    at_seven = [name for name, what, s in log if what == "after" and s == 7]
    assert at_seven == ["a", "b"]
    assert log[-2:] == [("a", "finish", 7), ("b", "finish", 7)]


def test_close_reaches_every_hook_and_then_raises_the_first_error():
    log = []
    hooks = Hooks()
    hooks.add(Recorder("checkpoint", log, fail_on_close=True))
    hooks.add(Recorder("writer", log))
    with pytest.raises(UserError, match="checkpoint failed to close"):
        hooks.close()
    assert [name for name, what, _ in log if what == "close"] == ["checkpoint", "writer"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return prepare_few_plays(tmp_path_factory.mktemp("hooks"), vocab=VOCAB)


def test_a_callers_hook_sees_the_runs_steps_and_metrics(data_dir, tmp_path, monkeypatch):
    use_one_device(monkeypatch)
    cfg = load_config(overrides=tiny_overrides(vocab=VOCAB, **{"data__data_dir": data_dir, "train__steps": 5,
                                                  "train__batch_size": 4, "train__log_every": 2,
                                                  "train__eval_every": 1000, "train__eval_batches": 2,
                                                  "train__checkpoint_every": 1000}))
    seen = {}
    summary = train(cfg, tmp_path / "run", quiet=True,
                    hooks=[(lambda step, metrics: seen.update({step: float(metrics["loss"])}), 2)])
    assert sorted(seen) == [2, 4, 5] and summary["step"] == 5
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: r["loss"] for r in records if r["split"] == "train"}
    assert sorted(logged) == [2, 4, 5]  # train.log_every=2 and the last step, as before hooks existed
    np.testing.assert_allclose([seen[s] for s in (2, 4, 5)], [logged[s] for s in (2, 4, 5)], rtol=1e-6)
    assert summary["validation"] is not None  # validation ran at the last step


def test_a_hook_that_raises_stops_the_run_and_the_loop_still_closes(data_dir, tmp_path, monkeypatch):
    use_one_device(monkeypatch)
    cfg = load_config(overrides=tiny_overrides(vocab=VOCAB, **{"data__data_dir": data_dir, "train__steps": 6,
                                                  "train__batch_size": 4, "train__log_every": 1,
                                                  "train__eval_every": 1000, "train__checkpoint_every": 2}))

    def stop_at_three(step, metrics):
        if step == 3:
            raise UserError("stop at step 3")

    with pytest.raises(UserError, match="stop at step 3"):
        train(cfg, tmp_path / "run", quiet=True, hooks=[(stop_at_three, 1)])
    saved = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == [2]  # step 2's checkpoint committed (closing waited for it); step 3 was never saved
