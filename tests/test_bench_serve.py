"""`photon-jax bench serve` (bench/serve_load.py, serve_stagger.py, cli/bench_serve_args.py) and the pure parts
of the side-by-side with vLLM (bench/peer_vllm.py).

Hand-made records and rows for the counting, medians, ratios and tables; fake servers for the interleaving and
freezing order; the argument errors through the real CLI entry; one real run of two tiny servers end to end
(slow); the stagger measurement on a tiny random-weight model. No wall-clock thresholds: only counts, orders and
the shape of what is reported.
"""

import asyncio
import json
import math
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest

from photon_jax.bench import peer_servers, peer_vllm, serve_load, serve_stagger
from photon_jax.bench.models import random_params
from photon_jax.cli.main import main
from photon_jax.config import load_config
from photon_jax.errors import UserError
from photon_jax.model.accounting import abstract_params
from photon_jax.serve import pool as pool_lib

LEVELS = "[{chunk: 2, encoder_layers: 1, decoder_layers: 1}, {chunk: 4, encoder_layers: 1, decoder_layers: 1}]"
# tiny photon-tiny and vanilla-tiny alike (one override set for every model of a bench run)
MODEL = ["model.vocab_size=384", "model.width=32", "model.ffn_width=64", "model.num_heads=4", "model.num_kv_heads=2",
         "model.dtype=float32", f"model.levels={LEVELS}", "model.num_layers=1", "model.scan_unroll=1"]
FAST_XLA = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
            "--xla_cpu_use_fusion_emitters=false")


# ----------------------------------------------------------------------------- client: token counting


def _sse(*events) -> bytes:
    return b"".join(f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n".encode() for e in events)


def _chunk(text):
    return {"choices": [{"index": 0, "text": text}]}


def _one(status: int, body: bytes) -> dict:
    transport = httpx.MockTransport(lambda request: httpx.Response(status, content=body))

    async def go():
        out = []
        async with httpx.AsyncClient(transport=transport) as client:
            await serve_load._one(client, "http://server", {}, 0.0, out)
        return out

    (rec,) = asyncio.run(go())
    return rec


def test_client_counts_one_token_per_id_and_reads_usage():
    rec = _one(200, _sse(_chunk(" 12"), _chunk(" 7 99"), {"choices": [], "usage": {"completion_tokens": 3}}, "[DONE]"))
    assert rec["status"] == 200 and len(rec["tokens"]) == 3 and rec["usage"] == 3 and rec["ended"]
    assert rec["tokens"][1] == rec["tokens"][2]  # two ids in one chunk arrive together


def test_client_records_a_refusal_with_no_tokens():
    rec = _one(429, b'{"error": "queue full"}')
    assert rec["status"] == 429 and rec["tokens"] == [] and "ended" not in rec


def _rec(sent, token_times, status=200, usage="auto", ended=True):
    rec = {"sent": sent, "tokens": list(token_times), "status": status}
    if usage is not None:
        rec["usage"] = len(token_times) if usage == "auto" else usage
    if ended:
        rec["ended"] = True
    return rec


def test_summarize_counts_only_requests_with_every_token():
    records = [_rec(0.0, [0.1, 0.2, 0.4]), _rec(1.0, [1.3, 1.4, 1.5]),
               _rec(2.0, [2.1, 2.2], usage=3),  # one token missing from the stream: not completed, usage differs
               _rec(3.0, [3.1, 3.2, 3.3], usage=None),  # no usage chunk: completed, but a mismatch
               _rec(4.0, [], status=429, usage=None, ended=False),
               _rec(5.0, [5.1], usage=None, ended=False),  # cut off at the duration limit
               _rec(6.0, [], status="error: refused", usage=None, ended=False)]
    s = serve_load.summarize(records, peak=4.0, elapsed=10.0, max_tokens=3)
    assert s["completed"] == 3 and s["refused_or_failed"] == 4 and s["usage_mismatch"] == 2
    assert s["req_per_s"] == pytest.approx(0.3) and s["output_tok_per_s"] == pytest.approx(0.9)
    # TTFT 0.1, 0.3, 0.1; ITL 0.1, 0.2, 0.1, 0.1, 0.1, 0.1 (numpy's linear percentiles)
    assert s["ttft_p50_s"] == pytest.approx(0.1) and s["ttft_p99_s"] == pytest.approx(np.percentile([.1, .3, .1], 99))
    assert s["itl_p50_s"] == pytest.approx(0.1) and s["itl_p99_s"] == pytest.approx(np.percentile([.1] * 5 + [.2], 99))
    assert s["peak_concurrent"] == 4


def test_summarize_with_nothing_completed_gives_nan_latencies():
    s = serve_load.summarize([_rec(0.0, [], status=503, usage=None, ended=False)], 0.0, 2.0, max_tokens=4)
    assert s["completed"] == 0 and s["refused_or_failed"] == 1 and s["output_tok_per_s"] == 0
    assert math.isnan(s["ttft_p50_s"]) and math.isnan(s["itl_p99_s"])


# ----------------------------------------------------------------------------- peak polling


class _Gauge:
    """server.running() answering a script of values (an exception is raised); `stop` is set after the last."""

    def __init__(self, values, stop):
        self.values, self.stop, self.calls = list(values), stop, 0

    def running(self):
        self.calls += 1
        value = self.values.pop(0)
        if not self.values:
            self.stop.set()
        if isinstance(value, Exception):
            raise value
        return value


def test_poll_peak_keeps_the_most_running_and_survives_a_failed_scrape():
    async def go():
        stop, peak = asyncio.Event(), [0.0]
        gauge = _Gauge([0.0, 2.0, httpx.ConnectError("busy"), 5.0, 1.0, float("nan"), 0.0], stop)
        await peer_servers.poll_peak(gauge, peak, stop, every_s=0)
        return peak[0], gauge.calls

    assert asyncio.run(go()) == (5.0, 7)


# ----------------------------------------------------------------------------- interleaving, freezing, rounds


class _FakeServer:
    """peer_servers.Server's surface, in memory; every server shares one list of events."""

    def __init__(self, name, events, fail_start=False):
        self.name, self.events, self.fail_start = name, events, fail_start
        self.url = f"http://{name}"
        self.frozen = self.stopped = False

    def wait_ready(self, timeout_s):
        if self.fail_start:
            raise UserError(f"{self.name} exited")

    def slot_pool(self):
        return {"photon-tiny-hiergen": (40, 100), "photon-tiny-recgen": (80, 50)}.get(self.name, (8, 500))

    def freeze(self):
        self.frozen = True

    def thaw(self):
        self.frozen = False

    def stop(self):
        self.stopped = True


@pytest.fixture
def fake_bench(monkeypatch):
    """bench_serve over fake servers: which server each load ran against, and which were frozen meanwhile."""
    events, servers = [], {}

    def preset(name, preset_name, mode, *args):
        servers[name] = _FakeServer(name, events, fail_start=name in fail)
        return servers[name]

    async def load(server, model, rate, requests, prompt_len, max_tokens, duration_s, seed):
        events.append({"server": server.name, "rate": rate, "seed": seed,
                       "frozen": sorted(n for n, s in servers.items() if s.frozen)})
        refused = 1 if "vanilla" in server.name else 0
        records = [_rec(0.0, [0.5] * max_tokens) for _ in range(requests - refused)]
        return records + [_rec(0.0, [], 429, None, False)] * refused, 3.0, 2.0

    fail = set()
    monkeypatch.setattr(peer_servers, "preset", preset)
    monkeypatch.setattr(serve_load, "_load", load)
    monkeypatch.setattr(httpx, "post", lambda url, **kw: httpx.Response(200, request=httpx.Request("POST", url)))
    return SimpleNamespace(events=events, servers=servers, fail=fail)


MODELS = [("photon-tiny", "hiergen"), ("photon-tiny", "recgen"), ("vanilla-tiny", None)]
NAMES = ["photon-tiny-hiergen", "photon-tiny-recgen", "vanilla-tiny-vanilla"]


def test_bench_serve_measures_every_server_in_turn_with_the_others_frozen(fake_bench):
    data = serve_load.bench_serve(MODELS, 0.01, 64, [1.0, 4.0], 4, 4, 4, 30, seed=7, rounds=2, log=lambda m: None)
    order = [(e["server"], e["rate"], e["seed"]) for e in fake_bench.events]
    a, b, c = NAMES
    assert order == [(a, 1.0, 7), (b, 1.0, 7), (c, 1.0, 7), (a, 4.0, 7), (b, 4.0, 7), (c, 4.0, 7),  # round 0
                     (b, 1.0, 8), (c, 1.0, 8), (a, 1.0, 8), (b, 4.0, 8), (c, 4.0, 8), (a, 4.0, 8)]  # round 1 rotated
    for e in fake_bench.events:  # all started before the first load; only the measured one runs
        assert e["frozen"] == sorted(set(NAMES) - {e["server"]}), e
    assert all(s.stopped for s in fake_bench.servers.values())
    assert data["interleaved"] and data["rounds"] == 2 and len(data["runs_by_round"]) == 12
    assert [(r["model"], r["mode"], r["offered_rate"]) for r in data["runs"]] == [
        ("photon-tiny", "hiergen", 1.0), ("photon-tiny", "recgen", 1.0), ("vanilla-tiny", "vanilla", 1.0),
        ("photon-tiny", "hiergen", 4.0), ("photon-tiny", "recgen", 4.0), ("vanilla-tiny", "vanilla", 4.0)]
    for r in data["runs"]:
        assert r["rounds"] == 2 and len(r["load_avg_1m"]) == 2 and r["peak_concurrent"] == 3
        assert r["completed"] == (3 if r["mode"] == "vanilla" else 4)
    vanilla = next(r for r in data["runs"] if r["mode"] == "vanilla")
    assert (vanilla["slots"], vanilla["bytes_per_slot"], vanilla["refused_or_failed"]) == (8, 500, 1)
    assert {(q["mode"], q["offered_rate"]) for q in data["ratios"]} == {(m, r) for m in ("hiergen", "recgen")
                                                                        for r in (1.0, 4.0)}


def test_a_server_that_fails_to_start_stops_every_other(fake_bench):
    fake_bench.fail.add("photon-tiny-recgen")
    with pytest.raises(UserError, match="photon-tiny-recgen exited"):
        serve_load.bench_serve(MODELS, 0.01, 64, [1.0], 4, 4, 4, 30, log=lambda m: None)
    assert len(fake_bench.servers) == 3 and all(s.stopped for s in fake_bench.servers.values())
    assert fake_bench.events == []


def _row(model, mode, rate, tok_s, ttft, rnd=0, load=(1.0, 2.0), **extra):
    return {"model": model, "mode": mode, "offered_rate": rate, "slots": 8 if mode == "vanilla" else 92,
            "bytes_per_slot": 100, "completed": 10, "refused_or_failed": 0, "usage_mismatch": 0, "elapsed_s": 5.0,
            "req_per_s": 2.0, "output_tok_per_s": tok_s, "ttft_p50_s": ttft, "ttft_p99_s": 2 * ttft,
            "itl_p50_s": 0.01, "itl_p99_s": 0.05, "peak_concurrent": 8 if mode == "vanilla" else 20,
            "load_avg_1m": list(load), "round": rnd, **extra}


def test_median_over_rounds_per_model_and_rate():
    rows = [_row("photon-tiny", "hiergen", 2.0, tok, 0.1, rnd, (load, load + 1), completed=done)
            for rnd, (tok, load, done) in enumerate([(100.0, 3.0, 10), (300.0, 9.0, 9), (200.0, 5.0, 10)])]
    rows.insert(1, _row("vanilla-tiny", "vanilla", 2.0, 50.0, 1.0))
    rows.append(_row("photon-tiny", "hiergen", 8.0, 400.0, 0.2, completed=7))
    out = serve_load.median_over_rounds(rows)
    assert [(r["mode"], r["offered_rate"], r["rounds"]) for r in out] == [("hiergen", 2.0, 3), ("vanilla", 2.0, 1),
                                                                        ("hiergen", 8.0, 1)]
    assert out[0]["output_tok_per_s"] == 200.0 and out[0]["load_avg_1m"] == [5.0, 6.0]
    assert out[0]["completed"] == 10 and isinstance(out[0]["completed"], int)
    assert out[2]["completed"] == 7 and out[2]["output_tok_per_s"] == 400.0 and "round" not in out[0]
    two = serve_load.median_over_rounds([_row("m", "vanilla", 1.0, 1.0, 0.1, completed=c) for c in (9, 10)])
    assert two[0]["completed"] == 9.5


def test_ratios_are_over_vanilla_at_the_same_rate():
    runs = [_row("photon-tiny", "hiergen", 2.0, 300.0, 0.2), _row("vanilla-tiny", "vanilla", 2.0, 100.0, 0.5),
            _row("photon-tiny", "recgen", 2.0, 50.0, 1.0), _row("photon-tiny", "hiergen", 8.0, 800.0, 0.4),
            _row("vanilla-tiny", "vanilla", 8.0, 200.0, 2.0), _row("photon-tiny", "hiergen", 32.0, 900.0, 0.5)]
    got = {(q["mode"], q["offered_rate"]): q for q in serve_load.ratios(runs)}
    assert set(got) == {("hiergen", 2.0), ("recgen", 2.0), ("hiergen", 8.0)}  # no vanilla at 32 req/s: no ratio
    assert got["hiergen", 2.0]["output_tok_per_s"] == pytest.approx(3.0)
    assert got["hiergen", 2.0]["ttft_p50"] == pytest.approx(0.4)
    assert got["recgen", 2.0]["output_tok_per_s"] == pytest.approx(0.5)
    assert got["hiergen", 8.0]["output_tok_per_s"] == pytest.approx(4.0)
    assert got["hiergen", 8.0]["slots"] == pytest.approx(92 / 8)
    assert got["hiergen", 8.0]["peak_concurrent"] == pytest.approx(20 / 8)


def test_table_shows_every_row_its_load_and_the_ratios():
    runs = [_row("photon-tiny", "hiergen", 2.0, 300.0, 0.2, load=(4.3, 6.5)),
            _row("vanilla-tiny", "vanilla", 2.0, 100.0, 0.5)]
    data = {"kv_budget_gib": 0.016, "max_context": 512, "requests": 10, "prompt_len": 32, "max_tokens": 64,
            "rounds": 3, "runs": runs, "ratios": serve_load.ratios(runs)}
    text = serve_load.table(data)
    lines = text.splitlines()
    assert "median of 3 round(s)" in lines[0] and "load 1m" in lines[1]
    assert lines[2].split()[:5] == ["photon-tiny", "hiergen", "2", "92", "10"] and lines[2].endswith("4.3-6.5")
    assert lines[3].split()[:2] == ["vanilla-tiny", "vanilla"] and lines[3].endswith("1.0-2.0")
    assert "photon-tiny hiergen rate 2: slots 11.5x" in text and "output tok/s 3.00x" in text


# ----------------------------------------------------------------------------- CLI argument errors


BENCH = ["bench", "serve", "--models", "photon-tiny,vanilla-tiny"]


@pytest.mark.parametrize("extra, expected", [
    (["--rate", "2,fast"], "--rate '2,fast': expected comma-separated numbers"),
    (["--rate", "4,0"], "--rate '4,0': every rate must be > 0"),
    (["--requests", "0"], "--requests must be >= 1, got 0"),
    (["--rounds", "0"], "--rounds must be >= 1, got 0"),
    (["--prompt-len", "40", "--max-tokens", "30", "--max-context", "64"],
     "--prompt-len 40 + --max-tokens 30 exceed --max-context 64"),
    (["--json-file", "{tmp}"], "is a directory; give a file name"),
    (["--json-file", "{tmp}/a_file/out.json"], "a_file is a file, not a directory"),
    (["--plot", "{tmp}/a_file/out.png"], "a_file is a file, not a directory"),
], ids=["rate-not-a-number", "rate-zero", "no-requests", "no-rounds", "longer-than-context", "json-file-is-a-dir",
        "json-file-under-a-file", "plot-under-a-file"])
def test_bad_bench_serve_arguments_are_one_line_exit_2(extra, expected, tmp_path, capsys, monkeypatch):
    (tmp_path / "a_file").write_text("x")

    def must_not_run(*args, **kwargs):
        raise AssertionError("bench serve started its servers despite a bad argument")
    monkeypatch.setattr(serve_load, "bench_serve", must_not_run)
    code = main(BENCH + [a.replace("{tmp}", str(tmp_path)) for a in extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("photon-jax: error: "), err
    assert expected in err[0], err[0]


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow  # two servers' start-up and compiles: about a minute on 2 busy CPU cores
def test_bench_serve_end_to_end_on_two_tiny_servers(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", FAST_XLA)  # the servers: one CPU device, XLA's cheap pipeline
    monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
    json_file, png = tmp_path / "serve.json", tmp_path / "serve.png"
    # 32 requests of 60 tokens at once: busy for many /metrics polls (a poll waits while a burst is admitted)
    code = main(["bench", "serve", "--models", "photon-tiny,vanilla-tiny", "--modes", "hiergen", "--kv-budget-gib",
                 "0.001", "--max-context", "64", "--rate", "1000", "--requests", "32", "--prompt-len", "4",
                 "--max-tokens", "60", "--duration", "300", "--json-file", str(json_file), "--plot", str(png), *MODEL])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    data = json.loads(json_file.read_text())
    assert data["interleaved"] and data["rounds"] == 1
    assert [(r["model"], r["mode"]) for r in data["runs"]] == [("photon-tiny", "hiergen"), ("vanilla-tiny", "vanilla")]
    for r in data["runs"]:
        assert (r["completed"], r["refused_or_failed"], r["usage_mismatch"]) == (32, 0, 0), r
        assert 1 <= r["peak_concurrent"] <= min(r["slots"], 32), r  # seen on the polled /metrics
        assert r["output_tok_per_s"] == pytest.approx(32 * 60 / r["elapsed_s"])
        assert len(r["load_avg_1m"]) == 2 and all(x >= 0 for x in r["load_avg_1m"])
    assert [(q["model"], q["mode"]) for q in data["ratios"]] == [("photon-tiny", "hiergen")]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "PHOTON / vanilla at the same offered rate" in out and "vanilla-tiny" in out


# ----------------------------------------------------------------------------- stagger


def test_stagger_layouts_put_rows_at_one_phase_or_at_every_phase():
    rows = serve_stagger.layouts(unit=8, slots=12)
    assert {n % 8 for n in rows["aligned"]} == {1} and len(set(rows["aligned"])) == 2
    assert {n % 8 for n in rows["staggered"]} == set(range(8))
    assert all(n > 8 for lens in rows.values() for n in lens) and all(len(v) == 12 for v in rows.values())


def test_measure_stagger_on_a_tiny_model(fast_compile):
    cfg = load_config(preset="photon-tiny", overrides=MODEL).model
    r = serve_stagger.measure_stagger(cfg, random_params(cfg), "hiergen", slots=4, max_context=32, steps=3,
                                      repeats=1)
    assert r["meta_context"] == 8 and (r["mode"], r["slots"], r["steps"]) == ("hiergen", 4, 3)
    assert r["aligned_phases"] == [1] and r["staggered_phases"] == [1, 2, 3, 4]  # both pools hold 4 busy rows
    for name in ("aligned", "staggered"):
        assert r[f"{name}_ms_per_step"] > 0 and r[f"{name}_ms_mean"] > 0
    assert math.isfinite(r["staggered_over_aligned"]) and r["staggered_over_aligned"] > 0


# ----------------------------------------------------------------------------- peer_vllm (pure parts)


def test_kv_bytes_per_sequence_is_what_our_vanilla_slot_holds_in_keys_and_values():
    cfg = load_config(preset="vanilla-tiny").model
    spec = pool_lib.PoolSpec(cfg, "vanilla", 1, pool_lib.capacity(cfg, 128))
    caches = pool_lib.pool_shapes(abstract_params(cfg), spec)["model"]["tokens"]
    kv = sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in (caches["k"], caches["v"]))
    assert peer_vllm.kv_bytes_per_sequence(cfg, 128, caches["k"].dtype.itemsize) == kv
    assert peer_vllm.kv_bytes_per_sequence(cfg, 64, 4) * 4 == peer_vllm.kv_bytes_per_sequence(cfg, 128, 8)


def _vllm_args(**kw):
    base = dict(vllm_bin="vllm-peer", served_name="peer", export="/export", seed=3, slo=["tpot:50"],
                text_path="/prompts.jsonl", output_len=64, input_len=32)
    return SimpleNamespace(**{**base, **kw})


def _flag(argv, name):
    return argv[argv.index(name) + 1]


def test_client_argv_random_prompts_at_a_rate():
    server = SimpleNamespace(url="http://127.0.0.1:9")
    argv = peer_vllm.client_argv(_vllm_args(), server, {"name": "8 req/s", "rate": 8.0, "prompts": 64},
                                 Path("/out/raw/r0.json"))
    assert argv[:3] == ["vllm-peer", "bench", "serve"] and _flag(argv, "--base-url") == server.url
    assert _flag(argv, "--request-rate") == "8.0" and _flag(argv, "--num-prompts") == "64"
    assert "--max-concurrency" not in argv  # open loop: arrivals do not wait for answers
    assert _flag(argv, "--dataset-name") == "random" and _flag(argv, "--random-input-len") == "32"
    assert _flag(argv, "--random-output-len") == "64" and "--dataset-path" not in argv
    assert _flag(argv, "--result-dir") == "/out/raw" and _flag(argv, "--result-filename") == "r0.json"
    assert "--ignore-eos" in argv and _flag(argv, "--temperature") == "0" and _flag(argv, "--goodput") == "tpot:50"


def test_client_argv_custom_text_in_a_closed_loop():
    load = {"name": "32 concurrent, play text", "concurrency": 32, "prompts": 64, "text": True}
    argv = peer_vllm.client_argv(_vllm_args(), SimpleNamespace(url="u"), load, Path("r.json"))
    assert _flag(argv, "--max-concurrency") == "32" and _flag(argv, "--request-rate") == "inf"
    assert _flag(argv, "--dataset-name") == "custom" and _flag(argv, "--dataset-path") == "/prompts.jsonl"
    assert _flag(argv, "--custom-output-len") == "64" and "--skip-chat-template" in argv
    assert "--random-input-len" not in argv


def _peer_row(server, load, tok_s, tpot, rnd, peak=4.0, failed=0, load_avg=2.0, **extra):
    row = {k: 1.0 for k in peer_vllm.METRICS}
    row.update(output_throughput=tok_s, median_tpot_ms=tpot, completed=16, server=server, load=load,
               peak_running=peak, failed=failed, load_avg=load_avg, round=rnd, **extra)
    return row


def test_peer_summarize_takes_medians_over_rounds_and_ratios_to_the_reference():
    rows = []
    for rnd, (ref, ours) in enumerate([(100.0, 60.0), (120.0, 90.0), (110.0, 66.0)]):
        rows += [_peer_row("vLLM vanilla", "2 req/s", ref, 20.0 + rnd, rnd, load_avg=rnd),
                 _peer_row("ours", "2 req/s", ours, 30.0 - rnd, rnd, peak=rnd + 3, failed=rnd,
                           engine_share={"decode": 0.5 + 0.1 * rnd, "insert": 0.1, "host": 0.4 - 0.1 * rnd})]
    rows.append(_peer_row("ours", "32 concurrent", 500.0, 40.0, 0, median_ttft_ms=None))
    out = peer_vllm.summarize(rows, "vLLM vanilla")
    assert [r["load"] for r in out] == ["2 req/s", "2 req/s", "32 concurrent"]  # loads in the order they ran
    by = {(r["load"], r["server"]): r for r in out}
    ours, ref, alone = by["2 req/s", "ours"], by["2 req/s", "vLLM vanilla"], by["32 concurrent", "ours"]
    assert ref["output_throughput"] == 110.0 and ref["median_tpot_ms"] == 21.0 and ref["load_avg"] == 1
    assert ours["output_throughput"] == 66.0 and ours["rounds"] == 3
    assert ours["throughput_vs_ref"] == pytest.approx(66 / 110) and ours["tpot_vs_ref"] == pytest.approx(29 / 21)
    assert ref["throughput_vs_ref"] == 1.0
    assert ours["peak_running"] == 5 and ours["failed"] == 2  # the worst round, not a median
    assert ours["engine_share"]["decode"] == pytest.approx(0.6) and "engine_share" not in ref
    assert "throughput_vs_ref" not in alone and "median_ttft_ms" not in alone  # no reference at that load


def test_peer_table_has_a_row_per_server_and_load():
    rows = [_peer_row("vLLM vanilla", "2 req/s", 100.0, 20.0, 0), _peer_row("ours", "2 req/s", 150.0, 10.0, 0)]
    summary = peer_vllm.summarize(rows, "vLLM vanilla")
    lines = peer_vllm.table(summary, "vLLM vanilla").splitlines()
    assert lines[0].startswith("| load | server | output tok/s | x vLLM vanilla |") and len(lines) == 4
    (line,) = [x for x in lines if x.startswith("| 2 req/s | ours |")]
    cells = [c.strip() for c in line.split("|")[1:-1]]
    assert len(cells) == lines[0].count("|") - 1 == 11
    assert cells[:4] == ["2 req/s", "ours", "150", "1.50"] and cells[-2] == "16 (failed 0)"
