"""Sweeps: grid expansion and FLOP matching, the ablation presets, and resuming an interrupted grid
without redoing finished runs (real training, evaluation and TPM measurement of tiny models)."""

from __future__ import annotations

import json
import math
import statistics

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import prepare_few_plays, tiny_overrides
from test_generation import tiny_model

from photon_jax.cli.cmd_sweep import grid_names, grid_path
from photon_jax.cli.main import main
from photon_jax.config import load_config
from photon_jax.errors import UserError
from photon_jax.eval.windows import score_windows
from photon_jax.generation.agreement import agreement
from photon_jax.model.accounting import train_flops_per_token
from photon_jax.model.losses import loss_fn
from photon_jax.sweep import load_grid, run_sweep
from photon_jax.sweep import measure as sweep_measure
from photon_jax.sweep.frontier_settings import budget_of
from photon_jax.sweep.runner import shared_data_dir
from photon_jax.sweep.seeds import aggregate, ratios_by_seed
from photon_jax.train.loop import train

TINY_MEASURE = {"agreement_windows": 2, "eval_batches": 2,
                "tpm": {"pf": "16/4", "de": "4/16", "max_batch": 2, "repeats": 1}}
VOCAB = 384
TRAIN = ["train.steps=4", "train.batch_size=8", "train.eval_every=2", "train.checkpoint_every=2",
         "train.log_every=1", "train.eval_batches=1", "train.warmup_steps=1"]


def _runs(*names):
    presets = {"photon": "photon-tiny", "vanilla": "vanilla-tiny", "block": "block-tiny"}
    return [{"name": n, "preset": presets[n.split("-")[0]]} for n in names]


# ----------------------------------------------------------------------------- grids


def test_grid_axes_expand_to_named_runs_with_their_overrides():
    grid = load_grid({"runs": [{"name": "p", "preset": "photon-tiny",
                                "grid": {"model.rec_alpha": [0.0, 0.3],
                                         "C": {"44": [], "22": ["model.levels.0.chunk=2", "model.levels.1.chunk=2"]}}},
                               {"name": "v", "preset": "vanilla-tiny"}]})
    names = [r.name for r in grid.runs]
    assert names == ["p-rec_alpha0.0-C44", "p-rec_alpha0.0-C22", "p-rec_alpha0.3-C44", "p-rec_alpha0.3-C22", "v"]
    c22 = grid.run("p-rec_alpha0.3-C22").cfg
    assert [lv.chunk for lv in c22.model.levels] == [2, 2] and c22.model.rec_alpha == 0.3
    assert grid.run("p-rec_alpha0.0-C44").cfg.model.levels[0].chunk == 4
    assert c22.name == "p-rec_alpha0.3-C22"
    assert grid.reference == "v"  # the first vanilla run by default


@pytest.mark.parametrize("family", ["vanilla", "block"])
@pytest.mark.parametrize("scale", ["tiny", "small"])
def test_flop_matched_steps_equal_total_flops(family, scale):
    grid = load_grid({"overrides": ["train.steps=300"],
                      "runs": [{"name": "photon", "preset": f"photon-{scale}"},
                               {"name": "base", "preset": f"{family}-{scale}", "flop_match": "photon"}]})
    photon, base = grid.run("photon").cfg, grid.run("base").cfg
    total = lambda c: c.train.steps * train_flops_per_token(c.model, c.data.seq_len)  # noqa: E731
    assert base.train.steps < photon.train.steps
    assert abs(total(base) / total(photon) - 1) <= 0.5 / base.train.steps + 1e-9  # within one rounding step
    # the committed FLOP-matched presets hold the same count for the presets' own step numbers
    preset = load_config(preset=f"{family}-{scale}-flops")
    ref = load_config(preset=f"photon-{scale}")
    assert preset.train.steps == round(ref.train.steps * train_flops_per_token(ref.model, ref.data.seq_len)
                                       / train_flops_per_token(preset.model, preset.data.seq_len))


def test_ablation_presets_change_only_what_they_name():
    base = load_config(preset="photon-tiny").model
    changed = {
        "photon-tiny-c22": lambda m: [lv.chunk for lv in m.levels] == [2, 2],
        "photon-tiny-r4": lambda m: [lv.fanout for lv in m.levels] == [4, 4],
        "photon-tiny-alpha03": lambda m: m.rec_alpha == 0.3,
        "photon-tiny-align-b": lambda m: m.alignment == "B",
        "photon-tiny-align-c": lambda m: m.alignment == "C",
        "photon-tiny-blocklocal": lambda m: m.block_local_lower,
    }
    for name, check in changed.items():
        m = load_config(preset=name).model
        assert check(m) and not check(base), name
        same = {k for k in ("width", "ffn_width", "num_heads", "vocab_size", "rec_alpha", "alignment",
                            "block_local_lower") if getattr(m, k) == getattr(base, k)}
        assert len(same) >= 6, name  # exactly one of these (or the levels) differs


def test_committed_grids_resolve():
    assert {"ablations-tiny", "reproduce-small", "chunks-lr-tiny"} <= set(grid_names())
    for name in grid_names():
        assert main(["sweep", name, "--list"]) == 0


def test_frontier_grid_has_four_flop_matched_budgets_up_to_one_epoch():
    grid = load_grid(grid_path("frontier-tiny"))
    assert len(grid.runs) == 36 and grid.seeds == (0, 1, 2)
    budgets: dict[str, list] = {}
    for spec in grid.runs:
        budgets.setdefault(budget_of(spec), []).append(spec)
        t = spec.cfg.train
        assert t.warmup_steps == round(t.steps / 10), spec.name  # 10% of the run's own steps
    assert list(budgets) == ["photon-b110", "photon-b220", "photon-b440", "photon-b880"]
    for budget, specs in budgets.items():
        assert sorted({s.source for s in specs}) == ["block-tiny", "photon-tiny", "vanilla-tiny"] and len(specs) == 9
        flops = [s.cfg.train.steps * train_flops_per_token(s.cfg.model, s.cfg.data.seq_len) for s in specs]
        assert max(flops) / min(flops) - 1 < 1 / min(s.cfg.train.steps for s in specs), budget
    one_epoch = grid.run("photon-b880-s0").cfg
    assert one_epoch.train.steps * one_epoch.train.batch_size * one_epoch.data.seq_len == 1_802_240  # ~1.80M


@pytest.mark.parametrize("grid, message", [
    ({}, "non-empty 'runs'"),
    ({"runs": []}, "non-empty 'runs'"),
    ({"runs": [{"name": "a", "preset": "photon-tiny"}], "color": 1}, "unknown grid key"),
    ({"runs": [{"name": "a"}]}, "exactly one of preset or config"),
    ({"runs": [{"name": "a", "preset": "photon-tiny", "config": "x.yaml"}]}, "exactly one of preset or config"),
    ({"runs": [{"name": "a b", "preset": "photon-tiny"}]}, "must be letters"),
    ({"runs": [{"name": "a", "preset": "photon-tiny"}, {"name": "a", "preset": "vanilla-tiny"}]}, "duplicate run"),
    ({"runs": [{"name": "a", "preset": "nope"}]}, "unknown preset"),
    ({"runs": [{"name": "a", "preset": "photon-tiny", "overrides": ["model.nope=1"]}]},
     "unknown key config.model.nope"),
    ({"runs": [{"name": "a", "preset": "photon-tiny", "overrides": "model.width=8"}]}, "list of KEY=VALUE"),
    ({"runs": [{"name": "a", "preset": "photon-tiny", "flop_match": "b"}]}, "not a run of the grid"),
    ({"runs": [{"name": "a", "preset": "photon-tiny", "grid": {}}]}, "non-empty mapping"),
    ({"runs": [{"name": "a", "preset": "photon-tiny", "grid": {"model.width": []}}]}, "non-empty list"),
    ({"runs": [{"name": "a", "preset": "photon-tiny"}], "reference": "z"}, "reference 'z'"),
    ({"runs": [{"name": "a", "preset": "photon-tiny"}], "measure": {"tpm": {"max_batch": 0}}}, "max_batch"),
    ({"runs": [{"name": "a", "preset": "photon-tiny"}], "measure": {"eval_batches": -1}}, "eval_batches"),
    ({"runs": [{"name": "a", "preset": "photon-tiny"}, {"name": "b", "preset": "vanilla-small",
                                                         "flop_match": "a"}]}, "same batch x seq_len"),
    ({"runs": [{"name": "a", "preset": "photon-tiny"}], "seeds": []}, "non-empty list of integers"),
    ({"runs": [{"name": "a", "preset": "photon-tiny"}], "seeds": [0, 0]}, "repeat a seed"),
    ({"runs": [{"name": "a", "preset": "photon-tiny"}], "seeds": [1, -2]}, "integers >= 0"),
    ({"runs": [{"name": "a", "preset": "photon-tiny"}], "frontier": {}}, "no vanilla run"),
    ({"runs": _runs("vanilla"), "frontier": {"contexts": [{"pf": "8/4"}]}}, r"frontier.contexts\[0\] must be"),
    ({"runs": _runs("vanilla"), "frontier": {"contexts": [{"pf": "8/4", "de": "4"}]}}, "PROMPT/GENERATED"),
    ({"runs": _runs("vanilla"), "frontier": {"reference": "photon-tiny"}}, "not an architecture"),
    ({"runs": _runs("vanilla"), "frontier": {"repeat": 2}}, "keys among"),
    ({"runs": [{"name": "a", "preset": "photon-tiny"}], "measure": {"budget_steps": [400, 200]}}, "increasing"),
    ({"runs": [{"name": "a", "preset": "photon-tiny"}], "measure": {"budget_steps": [300]}},
     "budget step 300 is not a checkpoint"),
    ({"runs": [{"name": "a", "preset": "photon-tiny", "overrides": ["train.checkpoint_every=100"]}],
      "measure": {"budget_steps": [100]}}, "train.keep_checkpoints >= 6"),
])
def test_bad_grids_are_one_line_errors(grid, message):
    with pytest.raises(UserError, match=message) as err:
        load_grid(grid)
    assert "\n" not in str(err.value)


def test_bad_grid_files_via_cli(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("runs: [\n")
    for argv, message in ((["sweep", str(bad)], "not valid YAML"), (["sweep", "no-such-grid"], "unknown grid"),
                          (["sweep", "ablations-tiny", "--only", "nope"], "no run named nope")):
        assert main(argv + ["--workdir", str(tmp_path / "w")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


def test_seeds_expand_every_run_with_its_own_init_order_and_flop_match():
    grid = load_grid({"overrides": ["train.steps=300"], "seeds": [0, 2],
                      "runs": [{"name": "photon", "preset": "photon-tiny"},
                               {"name": "vanilla", "preset": "vanilla-tiny", "flop_match": "photon"}]})
    assert [r.name for r in grid.runs] == ["photon-s0", "photon-s2", "vanilla-s0", "vanilla-s2"]
    assert grid.seeds == (0, 2) and grid.reference == "vanilla"
    for run in grid.runs:
        seed = int(run.name[-1])
        assert (run.seed, run.base, run.cfg.train.seed, run.cfg.data.order_seed) == (seed, run.name[:-3], seed, seed)
        assert run.cfg.data.seed == 0  # the same train/validation split for every seed
    vanilla = grid.run("vanilla-s2")
    assert vanilla.flop_match == "photon-s2" and vanilla.cfg.train.steps == grid.run("vanilla-s0").cfg.train.steps


def test_seed_summary_is_mean_and_std_of_per_seed_ratios():
    rows = [{"run": f"{g}-s{s}", "group": g, "seed": s, "train_flops": 10.0, "val_ppl": ppl}
            for g, values in (("photon", (12.0, 15.0, 11.0)), ("vanilla", (10.0, 10.0, 12.0)))
            for s, ppl in enumerate(values)]
    rows = ratios_by_seed(rows, lambda seed: f"vanilla-s{seed}")
    summary = {r["group"]: r for r in aggregate(rows)}
    ratios = [12.0 / 10.0, 15.0 / 10.0, 11.0 / 12.0]  # each seed against the same seed's reference
    mean = sum(ratios) / 3
    std = (sum((r - mean) ** 2 for r in ratios) / 2) ** 0.5
    assert summary["photon"]["ppl_x_mean"] == pytest.approx(mean)
    assert summary["photon"]["ppl_x_std"] == pytest.approx(std)
    assert summary["photon"]["val_ppl_mean"] == pytest.approx(38.0 / 3)
    assert summary["vanilla"]["ppl_x_std"] == 0.0 and summary["vanilla"]["n_seeds"] == 3


# ----------------------------------------------------------------------------- window scores


@pytest.mark.parametrize("family, chunks", [("photon", (2, 3)), ("photon", (4,)), ("vanilla", (4,))])
def test_window_scores_are_each_modes_nll_of_the_same_positions(family, chunks, fast_compile):
    """Every mode scored on the same windows and positions (eval/windows.py): the exact mode's window NLL is
    the training loss restricted to the continuation targets, and for PHOTON (L = 2) the same NLL comes out
    of teacher-forced HierGen generation, the path that scores RecGen, whose NLL is agreement's."""
    cfg, model, params = tiny_model(family, chunks, "A", False, family == "photon")
    length = 4 * cfg.meta_context if family == "photon" else 24
    windows = np.random.default_rng(3).integers(0, cfg.vocab_size, (3, length))
    prompt_len = length // 2
    scores = score_windows(cfg, params, windows)
    exact = "vanilla" if family == "vanilla" else "hiergen"
    assert scores["exact_mode"] == exact and scores["prompt_len"] == prompt_len
    assert (scores["windows"], scores["positions"]) == (3, 3 * (length - prompt_len))

    tokens = jnp.asarray(windows, jnp.int32)
    logits, aux = model.apply(params, tokens, jnp.ones(tokens.shape, jnp.float32))
    scored = np.zeros(windows.shape, np.float32)
    scored[:, prompt_len:] = 1.0  # loss weights: the targets tokens[:, prompt_len:] only
    _, metrics = loss_fn(cfg, logits, aux, tokens, jnp.asarray(scored))
    assert scores["modes"][exact]["nll"] == pytest.approx(float(metrics["token_loss"]), rel=1e-5)
    assert scores["modes"][exact]["perplexity"] == pytest.approx(math.exp(scores["modes"][exact]["nll"]))

    if len(chunks) < 2:  # vanilla, and Block (L = 1: its recgen is hiergen's computation): the exact mode only
        assert set(scores["modes"]) == {exact} and "hiergen_generation_nll" not in scores
        return
    forced = agreement(cfg, params, windows, free_running=False)
    assert set(scores["modes"]) == {"hiergen", "recgen"}
    assert forced["nll_hiergen"] == pytest.approx(scores["modes"]["hiergen"]["nll"], rel=1e-5)
    assert scores["hiergen_generation_nll"] == pytest.approx(forced["nll_hiergen"], rel=1e-6)
    recgen = forced["hiergen_vs_recgen"]["teacher_forced"]
    assert scores["modes"]["recgen"]["nll"] == pytest.approx(recgen["nll"], rel=1e-6)
    assert recgen["kl"] > 1e-6 and scores["modes"]["recgen"]["nll"] != scores["modes"]["hiergen"]["nll"]
    # a given agreement result is reused, but only for the same windows and prompt
    assert score_windows(cfg, params, windows, agreement_result=forced)["modes"] == scores["modes"]
    with pytest.raises(UserError, match="agreement result covers"):
        score_windows(cfg, params, windows, prompt_len=prompt_len + cfg.meta_context, agreement_result=forced)
    assert score_windows(cfg, params, windows[:2])["tokens_sha256"] != scores["tokens_sha256"]


# ----------------------------------------------------------------------------- running and resuming


@pytest.fixture(scope="module")
def plays(tmp_path_factory):
    return prepare_few_plays(tmp_path_factory.mktemp("sweep-data"), vocab=VOCAB)


def _grid(plays, names=("photon", "vanilla"), tpm=True):
    measure = TINY_MEASURE if tpm else {**TINY_MEASURE, "tpm": None}
    return load_grid({"overrides": tiny_overrides(layers=1, vocab=VOCAB) + TRAIN + [f"data.data_dir={plays}"],
                      "measure": measure, "runs": _runs(*names)})


def _lines(path):
    return path.read_text().splitlines()


@pytest.mark.slow
def test_interrupted_grid_resumes_without_redoing_finished_runs(tmp_path, plays, monkeypatch, fast_compile):
    grid = _grid(plays)
    work = tmp_path / "sweep"
    real_tpm = sweep_measure.tpm

    def crash_on_vanilla(spec, settings, log):
        if spec.name == "vanilla":
            raise KeyboardInterrupt  # as if ^C during the second run's measurement
        return real_tpm(spec, settings, log)

    monkeypatch.setattr(sweep_measure, "tpm", crash_on_vanilla)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(grid, work, plot=False, quiet=True)
    photon_dir, vanilla_dir = work / "runs" / "photon", work / "runs" / "vanilla"
    first = (photon_dir / "results.json").read_bytes()
    first_mtime = (photon_dir / "results.json").stat().st_mtime_ns
    assert not (vanilla_dir / "results.json").exists()
    trained_lines = _lines(vanilla_dir / "metrics.jsonl")
    assert json.loads((work / "results.json").read_text())["finished"] == 1  # the table after run 1

    monkeypatch.setattr(sweep_measure, "tpm", real_tpm)
    result = run_sweep(grid, work, plot=True, quiet=True)
    assert (photon_dir / "results.json").read_bytes() == first
    assert (photon_dir / "results.json").stat().st_mtime_ns == first_mtime
    assert _lines(vanilla_dir / "metrics.jsonl") == trained_lines  # measured, not trained again
    assert [r["run"] for r in result["rows"]] == ["photon", "vanilla"]
    rows = {r["run"]: r for r in result["rows"]}
    assert rows["vanilla"]["ppl_x"] == 1.0 and rows["vanilla"]["tpm_de_x"] == 1.0
    assert rows["photon"]["flops_x"] < 1.0 and rows["photon"]["tpm_de_recgen"] > 0
    assert 0.0 <= rows["photon"]["recgen_agreement"] <= 1.0
    header = (work / "results.csv").read_text().splitlines()[0].split(",")
    for column in ("run", "params", "train_flops", "val_ppl", "val_bpb", "recgen_agreement", "tpm_pf", "tpm_de"):
        assert column in header
    assert (work / "results.png").stat().st_size > 0

    # a third call reuses everything
    again = run_sweep(grid, work, plot=False, quiet=True)
    assert [r["val_ppl"] for r in again["rows"]] == [r["val_ppl"] for r in result["rows"]]


def test_partly_trained_run_resumes_from_its_checkpoint(tmp_path, plays, fast_compile):
    grid = _grid(plays, names=("photon",), tpm=False)
    work = tmp_path / "sweep"
    spec = shared_data_dir(grid.runs[0], work)
    train(spec.cfg, work / "runs" / "photon", quiet=True, stop_after=2)  # interrupted at step 2
    run_sweep(grid, work, plot=False, quiet=True)
    steps = [json.loads(line)["step"] for line in _lines(work / "runs" / "photon" / "metrics.jsonl")
             if json.loads(line)["split"] == "train"]
    assert steps == [1, 2, 3, 4]  # steps 1-2 were not trained again


def test_a_finished_run_with_another_config_is_refused(tmp_path, plays, fast_compile):
    work = tmp_path / "sweep"
    run_sweep(_grid(plays, names=("vanilla",), tpm=False), work, plot=False, quiet=True)
    changed = load_grid({"overrides": tiny_overrides(layers=1, vocab=VOCAB) + TRAIN + [f"data.data_dir={plays}",
                                                                                       "train.learning_rate=0.001"],
                         "measure": {**TINY_MEASURE, "tpm": None}, "runs": _runs("vanilla")})
    with pytest.raises(UserError, match=r"finished with another setting \(config.train.learning_rate"):
        run_sweep(changed, work, plot=False, quiet=True)


def test_budget_curve_from_one_runs_checkpoints_equals_its_training_evaluations(tmp_path, plays, fast_compile):
    """measure.budget_steps evaluates the run's own intermediate checkpoints (no retraining); each point
    equals the validation the training loop computed at that step on the live parameters."""
    train = [o for o in TRAIN if not o.startswith("train.steps")] + ["train.steps=6", "train.keep_checkpoints=3"]
    grid = load_grid({"overrides": tiny_overrides(layers=1, vocab=VOCAB) + train + [f"data.data_dir={plays}"],
                      "measure": {**TINY_MEASURE, "tpm": None, "agreement_windows": 0, "eval_batches": 1,
                                  "budget_steps": [2, 4]},
                      "runs": _runs("vanilla")})
    work = tmp_path / "sweep"
    result = run_sweep(grid, work, plot=True, quiet=True)
    (record,) = result["records"]
    assert [p["step"] for p in record["budget"]] == [2, 4, 6]
    during = {}
    for line in _lines(work / "runs" / "vanilla" / "metrics.jsonl"):
        rec = json.loads(line)
        if rec["split"] == "validation":
            during[rec["step"]] = rec
    for point in record["budget"]:
        assert point["token_loss"] == pytest.approx(during[point["step"]]["token_loss"], rel=1e-5)
        assert point["tokens"] == point["step"] * 8 * grid.runs[0].cfg.data.seq_len
    assert result["rows"][0]["val_ppl_at_2"] == record["budget"][0]["perplexity"]
    assert (work / "results.png").stat().st_size > 0


@pytest.mark.slow
def test_seeded_frontier_at_equal_flops_resumes_and_uses_one_side_by_side_tpm(tmp_path, plays, monkeypatch,
                                                                            fast_compile):
    """Two architectures x two budgets x two seeds, interrupted once: finished runs are neither retrained
    nor remeasured; seeds differ in init and window order; the per-group summary is the mean and std of the
    seeds; every frontier row's quality is the mean of its seeds' own measurements, held-out perplexity
    (exact modes) and window perplexity (every mode, the same windows for every run) apart, ratios are
    paired within a seed on the same measure, TPM comes from one interleaved bench over both architectures;
    a rerun reuses that bench and measures again (without training) a run measured by an older version."""
    grid = load_grid({"overrides": tiny_overrides(layers=1, vocab=VOCAB) + TRAIN + [f"data.data_dir={plays}"],
                      "measure": {**TINY_MEASURE, "tpm": None}, "seeds": [0, 1],
                      "frontier": {"contexts": [{"pf": "8/4", "de": "4/8"}], "repeats": 2, "max_batch": 2},
                      "runs": [{"name": "photon-b4", "preset": "photon-tiny", "overrides": ["train.steps=4"]},
                               {"name": "vanilla-b4", "preset": "vanilla-tiny", "flop_match": "photon-b4"},
                               {"name": "photon-b6", "preset": "photon-tiny", "overrides": ["train.steps=6"]},
                               {"name": "vanilla-b6", "preset": "vanilla-tiny", "flop_match": "photon-b6"}]})
    work = tmp_path / "sweep"
    real_measure = sweep_measure.measure

    def crash_on_one_seed(spec, run_dir, settings, log=print):
        if spec.name == "vanilla-b4-s1":
            raise KeyboardInterrupt  # as if ^C during that run's measurement
        return real_measure(spec, run_dir, settings, log=log)

    monkeypatch.setattr(sweep_measure, "measure", crash_on_one_seed)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(grid, work, plot=False, quiet=True)
    first = (work / "runs" / "photon-b4-s0" / "results.json").stat().st_mtime_ns
    trained = _lines(work / "runs" / "vanilla-b4-s1" / "metrics.jsonl")
    monkeypatch.setattr(sweep_measure, "measure", real_measure)
    result = run_sweep(grid, work, plot=True, quiet=True)
    assert (work / "runs" / "photon-b4-s0" / "results.json").stat().st_mtime_ns == first
    assert _lines(work / "runs" / "vanilla-b4-s1" / "metrics.jsonl") == trained  # measured, not retrained
    records = {p.parent.name: json.loads(p.read_text()) for p in (work / "runs").glob("*/results.json")}
    assert len(records) == 8
    ppl = [records[f"vanilla-b4-s{s}"]["validation"]["perplexity"] for s in (0, 1)]
    losses = [records[f"vanilla-b4-s{s}"]["curve"]["train"][0][1] for s in (0, 1)]
    assert len(set(ppl)) == 2 and len(set(losses)) == 2  # other inits and window orders
    summary = {row["group"]: row for row in result["summary"]}["vanilla-b4"]
    assert summary["n_seeds"] == 2 and summary["seeds"] == [0, 1]
    assert summary["val_ppl_mean"] == pytest.approx(statistics.fmean(ppl))
    assert summary["val_ppl_std"] == pytest.approx(statistics.stdev(ppl))
    assert "vanilla-b4" in (work / "results_summary.csv").read_text() and "±" in (work / "results.txt").read_text()

    frontier = result["frontier"]
    (tpm_file,) = work.glob("tpm-*.json")
    tpm = json.loads(tpm_file.read_text())
    assert tpm["settings"]["models"] == ["photon-tiny", "vanilla-tiny"]
    assert tpm["settings"]["timing_order"].startswith("interleaved") and tpm["settings"]["repeats"] == 2
    rows = {(r["budget"], r["architecture"], r["mode"]): r for r in frontier["rows"]}
    assert set(rows) == {(b, "photon-tiny", m) for b in ("photon-b4", "photon-b6") for m in ("hiergen", "recgen")} \
        | {(b, "vanilla-tiny", "vanilla") for b in ("photon-b4", "photon-b6")}
    label = frontier["contexts"][0]
    tpm_of = {(r["model"], r["mode"], r["regime"]): r["tpm"]["measured"] for r in tpm["results"]}
    for steps in ("4", "6"):
        budget = f"photon-b{steps}"
        flops = [records[f"{family}-b{steps}-s0"]["train_flops"] for family in ("photon", "vanilla")]
        assert flops[1] == pytest.approx(flops[0], rel=0.5 / records[f"vanilla-b{steps}-s0"]["steps"])
        ppl = {f: [records[f"{f}-b{steps}-s{s}"]["validation"]["perplexity"] for s in (0, 1)]
               for f in ("photon", "vanilla")}
        hier, van = rows[(budget, "photon-tiny", "hiergen")], rows[(budget, "vanilla-tiny", "vanilla")]
        assert hier["heldout_ppl_mean"] == pytest.approx(statistics.fmean(ppl["photon"]))
        assert hier["heldout_ppl_std"] == pytest.approx(statistics.stdev(ppl["photon"]))
        assert hier["heldout_ppl_x_mean"] == pytest.approx(statistics.fmean(p / v for p, v in zip(ppl["photon"],
                                                                                                 ppl["vanilla"])))
        assert van["heldout_ppl_x_mean"] == 1.0 and van["heldout_ppl_x_std"] == 0.0
        assert van["window_ppl_x_mean"] == 1.0
        # window perplexity: every mode on the same windows, RecGen beside window numbers only
        photon_runs = [records[f"photon-b{steps}-s{s}"] for s in (0, 1)]
        van_window = [records[f"vanilla-b{steps}-s{s}"]["windows"]["modes"]["vanilla"]["perplexity"] for s in (0, 1)]
        hier_window = [math.exp(r["agreement"]["nll_hiergen"]) for r in photon_runs]  # through generation
        assert hier["window_ppl_mean"] == pytest.approx(statistics.fmean(hier_window), rel=1e-4)
        rec = rows[(budget, "photon-tiny", "recgen")]
        rec_window = [math.exp(r["agreement"]["hiergen_vs_recgen"]["teacher_forced"]["nll"]) for r in photon_runs]
        assert rec["heldout_ppl_mean"] is None and rec["heldout_ppl_x_mean"] is None
        assert rec["window_ppl_mean"] == pytest.approx(statistics.fmean(rec_window))
        assert rec["window_ppl_x_mean"] == pytest.approx(statistics.fmean(r / v for r, v in zip(rec_window,
                                                                                               van_window)))
        assert rec["window_vs_exact_mean"] == pytest.approx(statistics.fmean(r / h for r, h in zip(rec_window,
                                                                                                  hier_window)),
                                                            rel=1e-4)
        assert rec[f"tpm_de_{label}"] == tpm_of[("photon-tiny", "recgen", "de")]
        assert rec[f"tpm_de_{label}_x"] == pytest.approx(tpm_of[("photon-tiny", "recgen", "de")]
                                                         / tpm_of[("vanilla-tiny", "vanilla", "de")])
    digests = {r["windows"]["tokens_sha256"] for r in records.values()}
    assert digests == {frontier["windows"]["tokens_sha256"]}  # one set of windows for every run and mode
    assert frontier["windows"]["positions"] == 2 * grid.runs[0].cfg.data.seq_len // 2
    for name in ("frontier.json", "frontier.csv", "frontier.txt", "frontier.md", "frontier.png",
                 "frontier_flops.png"):
        assert (work / name).stat().st_size > 0
    assert "window ppl" in (work / "frontier.txt").read_text()

    # a run measured by an older measure() (no window scores) is measured again, not trained again
    stale_path = work / "runs" / "vanilla-b6-s1" / "results.json"
    stale = json.loads(stale_path.read_text())
    del stale["windows"]
    stale["fingerprint"]["measure"]["version"] = 1
    stale_path.write_text(json.dumps(stale))
    trained = _lines(work / "runs" / "vanilla-b6-s1" / "metrics.jsonl")
    stamp = tpm_file.stat().st_mtime_ns
    again = run_sweep(grid, work, plot=False, quiet=True)
    assert tpm_file.stat().st_mtime_ns == stamp  # the side-by-side bench is reused, not rerun
    remeasured = json.loads(stale_path.read_text())
    assert remeasured["fingerprint"]["measure"]["version"] == sweep_measure.VERSION
    assert remeasured["windows"] == records["vanilla-b6-s1"]["windows"]
    assert _lines(work / "runs" / "vanilla-b6-s1" / "metrics.jsonl") == trained
    assert again["frontier"]["rows"] == frontier["rows"]
