"""`photon-jax bench`: batch search, memory accounting, JSON schemas, bad input. Never timings.

Tiny shapes (width 32, vocab 64) and tiny regimes; XLA optimisations are off (compile time
dominates and they do not change what is checked).
"""

from __future__ import annotations

import json
import math

import jax
import pytest

from photon_jax.bench import memory, report
from photon_jax.bench.models import load_models
from photon_jax.cli.main import main
from photon_jax.config import load_config
from photon_jax.reports import output

TINY = ["model.width=32", "model.ffn_width=64", "model.num_heads=2", "model.vocab_size=64"]


pytestmark = pytest.mark.usefixtures("fast_compile")  # conftest.py


def cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------------------- batch search

@pytest.mark.parametrize("per_sample,fixed,budget,cap", [
    (1000, 0, 10_000, 64), (1000, 0, 9_999, 64), (1000, 0, 1_000_000, 64), (1000, 0, 1_000_000, 10 ** 9),
    (333, 50, 12_345, 1000), (7, 0, 6, 8), (10 ** 6, 0, 10 ** 6, 1)])
def test_batch_search_respects_the_budget(per_sample, fixed, budget, cap):
    total = lambda b: fixed + per_sample * b  # noqa: E731
    s = memory.largest_fitting_batch(total, budget, cap)
    if total(1) > budget:
        assert s.fit == s.used == 0
        return
    assert total(s.fit) <= budget < total(s.fit + 1)
    assert s.used == min(s.fit, cap) and s.capped == (s.fit > cap)
    assert s.bytes_at_used == total(s.used) <= budget
    assert s.probes <= 2 * math.log2(max(s.fit, 2)) + 4


def test_batch_search_on_a_nonlinear_allocation():
    total = lambda b: 64 * b + 4096 * -(-b // 8)  # noqa: E731  (e.g. pages of 8 rows)
    for budget in (5_000, 50_000, 123_456, 10 ** 7):
        fit = max(b for b in range(0, 20_000) if b == 0 or total(b) <= budget)
        assert memory.largest_fitting_batch(total, budget, 10 ** 9).fit == fit


@pytest.mark.parametrize("preset,mode", [("photon-tiny", "hiergen"), ("photon-tiny", "recgen"),
                                         ("block-tiny", "hiergen"), ("vanilla-tiny", "vanilla")])
def test_batch_search_with_the_real_cache_trees(preset, mode):
    cfg = load_config(preset=preset).model
    context = 2048 + 128
    per_sample = memory.per_sample_kv(cfg, mode, context)["measured_total"]
    budget = int(0.05 * 2 ** 30)
    s = memory.largest_fitting_batch(memory.cache_bytes_fn(cfg, mode, context), budget, cap=64)
    assert s.fit * per_sample <= budget < (s.fit + 1) * per_sample
    assert s.used == min(s.fit, 64) and s.capped == (s.fit > 64)


# ----------------------------------------------------------------------------- memory accounting

@pytest.mark.parametrize("context", [2048, 2048 + 128, 37])
def test_measured_cache_bytes_against_the_analytic_formula(context):
    """Measured (the trees the generation code allocates) vs analysis.kv_bytes_per_sample:
    encoder caches hold the context rounded up to a whole meta-context B (equal when B divides
    it); local decoder caches hold R + C - 1 rows where the analytic count says R + C; the
    vanilla cache is exact."""
    photon = load_config(preset="photon-tiny", overrides=["model.block_local_lower=true"]).model
    block = load_config(preset="block-tiny").model
    vanilla = load_config(preset="vanilla-tiny").model
    for cfg, modes in ((photon, ("hiergen", "recgen", "exact-local")), (block, ("hiergen",)),
                       (vanilla, ("vanilla",))):
        entry = 2 * cfg.kv_heads * cfg.head_width * 2  # bf16 K and V
        for mode in modes:
            kv = memory.per_sample_kv(cfg, mode, context)
            if cfg.family == "vanilla":
                assert kv["measured"] == kv["analytic"] == {"tokens": cfg.num_layers * context * entry}
                continue
            b = cfg.meta_context
            tokens = -(-context // b) * b
            per = 1
            for i, level in enumerate(cfg.levels):
                per *= level.chunk
                name = f"encoder_{i}"
                measured, analytic = kv["measured"][name], kv["analytic"][name]
                if analytic == 0:  # recgen lower levels
                    assert measured == 0
                elif mode == "exact-local" and i < len(cfg.levels) - 1:  # ring of one meta-context
                    assert measured == analytic == level.encoder_layers * (b // per) * entry
                else:
                    assert measured == level.encoder_layers * (tokens // per) * entry
                    assert analytic == level.encoder_layers * -(-context // per) * entry
                w = level.fanout + level.chunk
                assert kv["measured"][f"decoder_{i}"] * w == kv["analytic"][f"decoder_{i}"] * (w - 1)
            assert kv["measured_total"] == sum(kv["measured"].values())


def test_kv_reads_per_token_by_hand():
    block = load_config(preset="block-tiny", overrides=TINY).model  # C 4, R 2, 4 + 4 layers
    entry = 2 * block.kv_heads * block.head_width * 2
    reads = memory.kv_reads_per_token(block, "hiergen", 4, 4, 2)["by_cache"]
    # tokens 5..8: decoder rows R + n mod 4 = 3, 4, 5, 2; token 8 completes unit 2: encoder reads 2
    assert reads["decoder_0"] == 4 * (3 + 4 + 5 + 2) * entry / 4
    assert reads["encoder_0"] == 4 * 2 * entry / 4
    vanilla = load_config(preset="vanilla-tiny", overrides=TINY).model
    v = memory.kv_reads_per_token(vanilla, "vanilla", 10, 3, 2)["total"]
    assert v == vanilla.num_layers * (11 + 12 + 13) * entry / 3
    photon = load_config(preset="photon-tiny", overrides=TINY).model
    h = memory.kv_reads_per_token(photon, "hiergen", 64, 64, 2)
    r = memory.kv_reads_per_token(photon, "recgen", 64, 64, 2)
    assert r["by_cache"]["encoder_0"] == 0 < h["by_cache"]["encoder_0"]
    assert r["by_cache"]["encoder_1"] == h["by_cache"]["encoder_1"] > 0
    assert r["total"] < h["total"] < memory.kv_reads_per_token(vanilla, "vanilla", 64, 64, 2)["total"]


def test_regimes():
    from photon_jax.bench.tpm import resolve_regimes

    assert resolve_regimes("both") == {"pf": (2048, 128), "de": (128, 2048)}
    assert resolve_regimes("both", pf="256/32", de="32/256") == {"pf": (256, 32), "de": (32, 256)}
    assert resolve_regimes("de", prompt_len=16) == {"de": (16, 2048)}
    assert resolve_regimes("pf", gen_len=8, pf="64/4") == {"pf": (64, 8)}


# ----------------------------------------------------------------------------- CLI: JSON schemas

@pytest.fixture(scope="module")
def tpm_run(fast_compile, tmp_path_factory):
    out = tmp_path_factory.mktemp("tpm")
    argv = ["bench", "tpm", "--models", "photon-tiny,vanilla-tiny", "--regime", "pf", "--pf", "24/4",
            "--de", "4/20", "--max-batch", "3", "--repeats", "1", "--memory-budget", "0.5",
            "--perplexities", "photon-tiny=30,vanilla-tiny=22", "--json-file", str(out / "tpm.json"),
            "--plot", str(out / "tpm.png"), *TINY]
    code = main(argv)
    return code, out


def test_tpm_json_schema(tpm_run):
    code, out = tpm_run
    assert code == 0
    data = json.loads((out / "tpm.json").read_text())
    assert set(report.TOP_KEYS) <= set(data)
    assert data["schema_version"] == output.SCHEMA_VERSION == 1 and data["benchmark"] == "tpm"
    assert data["reference"] == "vanilla-tiny"
    assert data["settings"]["regimes"] == {"pf": {"prompt_len": 24, "gen_len": 4}}
    seen = {(r["model"], r["mode"], r["regime"]) for r in data["results"]}
    assert seen == {(m, mode, g) for m, mode in (("photon-tiny", "hiergen"), ("photon-tiny", "recgen"),
                                                 ("vanilla-tiny", "vanilla")) for g in ("pf",)}
    for r in data["results"]:
        assert set(report.TPM_RESULT_KEYS) <= set(r), set(report.TPM_RESULT_KEYS) - set(r)
        assert r["attention"] == {"impl": "auto", "kernel_sites": 0, "path": "xla"}  # auto on CPU: the XLA path
        assert {"fit", "used", "capped", "cap", "budget_bytes"} <= set(r["batch"])
        assert r["batch"]["used"] == 3 and r["batch"]["capped"]  # the budget fits far more
        assert {"analytic", "analytic_total", "measured", "measured_total", "allocated", "device_slope"} \
            <= set(r["kv_bytes_per_sample"])
        assert {"measured", "analytic", "device"} == set(r["tpm"])
        assert r["tpm"]["measured"] > 0 and r["ttft_s"] > 0
        assert r["timing"]["repeats"] == 1 and not r["timing"]["recompiled"]
        assert set(r["vs_reference"]) >= {"tpm_ratio", "memory_reduction", "throughput_ratio"}
        assert r["perplexity"] == {"photon-tiny": 30.0, "vanilla-tiny": 22.0}[r["model"]]  # --perplexities
    assert (out / "tpm.png").stat().st_size > 1000


def test_interleaved_tpm_times_every_cell_once_per_round(monkeypatch):
    """--interleave: warm-up of every cell first, then round-robin timing (the real generation, spied on),
    each cell's median over its own rounds, nothing compiled while timing."""
    from photon_jax.bench import runs, tpm

    order = []
    real = runs.timed_sample

    def spy(cfg, params, mode, prompts, gen_len):
        order.append((cfg.family, mode))
        return real(cfg, params, mode, prompts, gen_len)

    monkeypatch.setattr(runs, "timed_sample", spy)
    models = load_models(["photon-tiny", "vanilla-tiny"], TINY)
    modes = {"photon-tiny": ["hiergen", "recgen"], "vanilla-tiny": ["vanilla"]}
    data = tpm.run_tpm(models, modes, {"pf": (8, 4)}, 2 ** 28, 2, 3, device_slope=False, interleave=True,
                       log=lambda _: None)
    cells = [("photon", "hiergen"), ("photon", "recgen"), ("vanilla", "vanilla")]
    assert order == cells * 3
    assert data["settings"]["timing_order"].startswith("interleaved")
    for r in data["results"]:
        assert r["timing"]["repeats"] == 3 and not r["timing"]["recompiled"] and r["tpm"]["measured"] > 0


def test_allocated_caches_equal_the_measured_figures(tpm_run):
    """The cache arrays a real generation run returns have exactly the measured byte counts."""
    _, out = tpm_run
    data = json.loads((out / "tpm.json").read_text())
    for r in data["results"]:
        kv = r["kv_bytes_per_sample"]
        assert kv["allocated"] == kv["measured"], (r["model"], r["mode"], r["regime"])
        assert kv["allocated_total"] == kv["measured_total"]
        assert r["vs_reference"]["memory_reduction"] == pytest.approx(
            next(x for x in data["results"] if x["model"] == "vanilla-tiny" and x["regime"] == r["regime"])
            ["kv_bytes_per_sample"]["measured_total"] / kv["measured_total"])


def test_context_json_schema(tmp_path, capsys):
    """Through the Pallas kernels (interpret mode here): each row says which attention ran and how many
    kernel sites its decode program holds (recgen: two local decoders + the top encoder, one layer each;
    vanilla: its layers)."""
    path = tmp_path / "ctx.json"
    code, out, err = cli(capsys, "bench", "context", "--models", "photon-tiny,vanilla-tiny", "--modes", "recgen",
                         "--contexts", "12", "--gen-len", "4", "--repeats", "1", "--json-file", str(path),
                         "--plot", str(tmp_path / "ctx.png"), *TINY, "model.attention_impl=pallas")
    assert code == 0, err
    data = json.loads(path.read_text())
    assert set(report.TOP_KEYS) <= set(data) and data["schema_version"] == 1 and data["benchmark"] == "context"
    assert [(r["model"], r["mode"], r["context"]) for r in data["results"]] == [
        ("photon-tiny", "recgen", 12), ("vanilla-tiny", "vanilla", 12)]
    for r in data["results"]:
        assert set(report.CONTEXT_RESULT_KEYS) <= set(r)
        assert r["kv_bytes_per_sample"]["allocated_total"] == r["kv_bytes_per_sample"]["measured_total"]
        layers = load_config(preset=r["model"], overrides=TINY).model
        expected = (sum(lv.decoder_layers for lv in layers.levels) + layers.levels[-1].encoder_layers
                    if r["family"] == "photon" else layers.num_layers)
        assert r["attention"] == {"impl": "pallas", "kernel_sites": expected, "path": "pallas"}
    assert f"pallas x{data['results'][1]['attention']['kernel_sites']}" in out
    assert (tmp_path / "ctx.png").stat().st_size > 1000
    assert "vanilla-tiny" in out


def test_train_json_schema(tmp_path, capsys):
    path = tmp_path / "train.json"
    code, out, err = cli(capsys, "bench", "train", "--models", "photon-tiny,vanilla-tiny", "--steps", "2",
                         "--warmup", "0", "--batch-size", "2", "--seq-len", "32", "--devices", "1",
                         "--json-file", str(path), *TINY)
    assert code == 0, err
    data = json.loads(path.read_text())
    assert set(report.TOP_KEYS) <= set(data) and data["schema_version"] == 1 and data["benchmark"] == "train"
    assert [r["model"] for r in data["results"]] == ["photon-tiny", "vanilla-tiny"]
    for r in data["results"]:
        assert set(report.TRAIN_RESULT_KEYS) <= set(r)
        assert r["tokens_per_step"] == 2 * 32 and len(r["step_times_s"]) == 2 and r["devices"] == 1
        assert math.isfinite(r["final_loss"])
        # one device: nothing to communicate, nothing the partitioner could replicate (docs/scale-out.md)
        assert r["communication"]["compiled"]["total"]["count"] == 0 and r["rematerializations"] == []
        assert set(r["vs_reference"]) >= {"flops_per_token_ratio", "time_per_token_ratio",
                                          "flops_per_token_per_param_ratio"}
    photon = data["results"][0]["vs_reference"]
    assert photon["flops_per_token_ratio"] < 1  # PHOTON runs its stacks on C-times shorter streams
    assert data["results"][1]["vs_reference"]["flops_per_token_ratio"] == 1


# ----------------------------------------------------------------------------- CLI: bad input

@pytest.mark.parametrize("argv,words", [
    (["--models", "photon-tiny,nosuch-model"], ["nosuch-model"]),
    (["--regime", "xx"], ["xx"]),
    (["--memory-budget", "-1"], ["--memory-budget"]),
    (["--memory-budget", "0"], ["--memory-budget"]),
    (["--models", "photon-tiny", "--modes", "exact-local"], ["exact-local", "block_local_lower"]),
    (["--models", "block-tiny", "--modes", "exact-local"], ["exact-local"]),
    (["--modes", "fastgen"], ["fastgen"]),
    (["--pf", "256"], ["--pf"]),
    (["--regime", "both", "--prompt-len", "64"], ["--pf"]),
    (["--gen-len", "0", "--regime", "pf"], ["--gen-len"]),
    (["--repeats", "0"], ["--repeats"]),
    (["--max-batch", "-3"], ["--max-batch"]),
    (["--models", "photon-tiny,photon-tiny"], ["twice"]),
    (["--models", ""], ["--models"]),
    (["--perplexities", "gpt2=20"], ["gpt2"]),
    (["--memory-budget", "0.000001"], ["budget"]),
    (["model.nosuch=1"], ["nosuch"]),
])
def test_bench_tpm_bad_input_is_one_line(capsys, argv, words):
    code, out, err = cli(capsys, "bench", "tpm", *argv)
    assert code == 2, (code, out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("photon-jax: error: "), err
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.mark.parametrize("argv,words", [
    (["context", "--contexts", "1024,x"], ["--contexts"]),
    (["context", "--contexts", "0"], ["--contexts"]),
    (["train", "--steps", "0"], ["--steps"]),
    (["train", "--seq-len", "30"], ["seq_len"]),
    (["train", "--models", "nope"], ["nope"]),
    (["train", "--devices", "0"], ["--devices"]),
    (["nosuch"], ["nosuch"]),
    (["prepare", "--size", "lots"], ["--size"]),
    (["prepare", "--workers", "1,0"], ["--workers"]),
    (["prepare", "--corpus", "/no/such/corpus.jsonl"], ["not found"]),
    (["prepare", "--unit-mb", "0"], ["--unit-mb"]),
])
def test_other_bench_commands_bad_input_is_one_line(capsys, argv, words):
    code, out, err = cli(capsys, "bench", *argv)
    assert code == 2, (code, out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("photon-jax: error: "), err
    for word in words:
        assert word in lines[0], (word, lines[0])


def test_default_modes_per_family():
    from photon_jax.bench.models import select_modes

    models = load_models(["photon-tiny", "block-tiny", "vanilla-tiny"])
    assert select_modes(models, None) == {"photon-tiny": ["hiergen", "recgen"], "block-tiny": ["hiergen"],
                                          "vanilla-tiny": ["vanilla"]}
    assert select_modes(models, ["recgen"])["block-tiny"] == ["recgen"]


def test_device_slope_with_a_memory_reporting_backend(monkeypatch):
    """GPU path on CPU: stand in for the allocator's bytes_in_use with the bytes of live arrays; the
    slope over batch of the state a run holds is then exactly the state's bytes per sample."""
    from photon_jax.bench import runs
    from photon_jax.bench.models import random_params

    monkeypatch.setattr(runs, "device_bytes_in_use", lambda: sum(x.nbytes for x in jax.live_arrays()))
    cfg = load_config(preset="photon-tiny", overrides=TINY).model
    params = random_params(cfg)
    hi = runs.allocated_state(cfg, params, "recgen", [[1] * 20, [2] * 20], 4)
    assert hi["device_bytes_held"] == hi["state_total"]  # caches + the small per-row decoder state
    assert hi["caches_total"] == 2 * memory.per_sample_kv(cfg, "recgen", 24)["measured_total"]
    slope = runs.device_slope(cfg, params, "recgen", 20, 4, 2, hi["device_bytes_held"])
    assert slope["batches"] == [1, 2]
    assert slope["bytes_per_sample"] == hi["state_total"] / 2


def test_prepare_bench(tmp_path, capsys):
    """The real prepare per worker count on a generated corpus: throughput, speed-up, peak memory, projection."""
    from photon_jax.bench.prepare_bench import parse_size

    assert (parse_size("1GB"), parse_size("200MB"), parse_size("512MiB")) == (10 ** 9, 2 * 10 ** 8, 512 << 20)
    code, out, err = cli(capsys, "bench", "prepare", "--size", "2MB", "--workers", "1,2", "--unit-mb", "0.25",
                         "--vocab-size", "1024", "--json", "--json-file", str(tmp_path / "p.json"),
                         "--plot", str(tmp_path / "p.png"))
    assert code == 0, err
    data = json.loads(out)
    assert tuple(data) [:len(report.TOP_KEYS)] == report.TOP_KEYS and data["benchmark"] == "prepare"
    assert json.loads((tmp_path / "p.json").read_text())["results"] == data["results"]
    assert (tmp_path / "p.png").stat().st_size > 0
    one, two = data["results"]
    assert (one["workers"], two["workers"]) == (1, 2) and one["speedup_vs_1"] == pytest.approx(1.0)
    for r in data["results"]:
        assert r["input_bytes"] >= 2 * 10 ** 6 and r["units"] >= 8 and r["tokens"] > 0
        assert r["mb_per_s"] == pytest.approx(r["input_bytes"] / 1e6 / r["seconds"])
        assert two["tokens"] == one["tokens"] and two["documents"] == one["documents"]
        assert 0 < r["peak_rss_main_mib"] < 4096
    assert two["peak_rss_worker_mib"] > 0 and one["peak_rss_worker_mib"] is None  # 1 worker runs in process
    assert data["projection"]["hours"] > 0 and "Pile" in data["notes"][0]
