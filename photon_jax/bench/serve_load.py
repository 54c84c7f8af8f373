"""`photon-jax bench serve`: an open-loop Poisson load against a real `photon-jax serve` process per model.

Every model gets its own server process (random weights of its preset: speed and memory do not depend
on their values) at the SAME KV budget and context, so the slot pool of each holds what its bytes per
slot allow. All servers are started first; then, for each round and rate, each server is measured in
turn (round-robin), so a drifting machine load hits every model alike, and while one is measured the
others are frozen (SIGSTOP, peer_servers.py) so that an idle server takes no CPU from it. With several
--rounds the report gives the median per (model, mode, rate) and keeps every round's row. The client is
open-loop: request i is sent at the i-th arrival of a Poisson process of the offered rate, whatever the
server's state (a closed loop would hide queueing). Every request has the same prompt length and is
forced to exactly max_tokens tokens (random weights, no EOS: the server's text is the token ids). Streams
are read to the end; TTFT = send -> first token, ITL = gaps between a request's tokens. Peak concurrent
sequences = the most busy slots /metrics showed during the run (polled every 20 ms). Every row records
the machine's 1-minute load average before and after it. Loopback only; a run is bounded by --requests
and a duration limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from photon_jax.bench import peer_servers
from photon_jax.errors import UserError

POLL_S = 0.02
START_TIMEOUT_S = 900
# what a row measures; with several rounds, the reported row holds the median of each
MEASURED = ("completed", "refused_or_failed", "usage_mismatch", "elapsed_s", "req_per_s", "output_tok_per_s",
            "ttft_p50_s", "ttft_p99_s", "itl_p50_s", "itl_p99_s", "peak_concurrent")


@dataclasses.dataclass
class ModelServer:
    preset: str
    mode: str  # "vanilla" for a vanilla model
    server: peer_servers.Server
    slots: int = 0
    slot_bytes: int = 0


async def _one(client, url, body, t_send, out):
    rec = {"sent": t_send, "tokens": [], "status": None}
    out.append(rec)  # first: a request cut off at the duration limit (cancelled) still counts as not done
    try:
        async with client.stream("POST", f"{url}/v1/completions", json=body) as r:
            rec["status"] = r.status_code
            if r.status_code != 200:
                await r.aread()
            else:
                async for line in r.aiter_lines():
                    if not line.startswith("data:") or line == "data: [DONE]":
                        continue
                    now = time.perf_counter()
                    data = json.loads(line[5:])
                    for c in data["choices"]:
                        rec["tokens"] += [now] * len(c["text"].split())  # one id per word (TokenIdText)
                    if data.get("usage"):
                        rec["usage"] = data["usage"]["completion_tokens"]
                rec["ended"] = True
    except httpx.HTTPError as e:
        rec["status"] = f"error: {e}"


async def _load(server: peer_servers.Server, model, rate, requests, prompt_len, max_tokens, duration_s, seed):
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate, size=requests)
    vocab = 100  # any ids in the vocabulary: the weights are random
    out, peak, stop = [], [0.0], asyncio.Event()
    limits = httpx.Limits(max_connections=requests + 8, max_keepalive_connections=requests + 8)
    async with httpx.AsyncClient(timeout=duration_s, limits=limits) as client:
        poller = asyncio.create_task(peer_servers.poll_peak(server, peak, stop, POLL_S))
        t0 = time.perf_counter()
        tasks = []
        for i in range(requests):
            await asyncio.sleep(max(0.0, t0 + gaps[: i + 1].sum() - time.perf_counter()))
            body = {"model": model, "prompt": [int(x) for x in rng.integers(1, vocab, size=prompt_len)],
                    "max_tokens": max_tokens, "temperature": 0, "stream": True,
                    "stream_options": {"include_usage": True}}
            tasks.append(asyncio.create_task(_one(client, server.url, body, time.perf_counter(), out)))
        _, pending = await asyncio.wait(tasks, timeout=max(1.0, duration_s - (time.perf_counter() - t0)))
        for t in pending:
            t.cancel()
        elapsed = time.perf_counter() - t0
        stop.set()
        await poller
    return out, peak[0], elapsed


def _pct(values, q):
    return float(np.percentile(values, q)) if len(values) else float("nan")


def summarize(records, peak, elapsed, max_tokens) -> dict:
    """Completed = answered 200 with all max_tokens tokens streamed; usage_mismatch = streams read to their end
    whose usage (the server's count) differs from the tokens they carried, or is missing: a lost chunk shows."""
    ok = [r for r in records if r["status"] == 200 and len(r["tokens"]) == max_tokens]
    ttft = [r["tokens"][0] - r["sent"] for r in ok]
    itl = [b - a for r in ok for a, b in zip(r["tokens"], r["tokens"][1:])]
    mismatch = sum(bool(r.get("ended")) and r.get("usage") != len(r["tokens"]) for r in records)
    return {"completed": len(ok), "refused_or_failed": len(records) - len(ok), "usage_mismatch": mismatch,
            "elapsed_s": elapsed, "req_per_s": len(ok) / elapsed,
            "output_tok_per_s": sum(len(r["tokens"]) for r in ok) / elapsed,
            "ttft_p50_s": _pct(ttft, 50), "ttft_p99_s": _pct(ttft, 99), "itl_p50_s": _pct(itl, 50),
            "itl_p99_s": _pct(itl, 99), "peak_concurrent": int(peak)}


def check_lengths(prompt_len: int, max_tokens: int, max_context: int) -> None:
    if prompt_len + max_tokens > max_context:
        raise UserError(f"--prompt-len {prompt_len} + --max-tokens {max_tokens} exceed --max-context {max_context}")


def bench_serve(models: list[tuple[str, str | None]], budget_gib: float, max_context: int, rates: list[float],
                requests: int, prompt_len: int, max_tokens: int, duration_s: float, overrides=(), seed: int = 0,
                log=print, align: bool = True, rounds: int = 1) -> dict:
    """models: (preset, mode or None) pairs. Returns the report dict (JSON-ready)."""
    check_lengths(prompt_len, max_tokens, max_context)
    rows = []
    with tempfile.TemporaryDirectory(prefix="photon-bench-serve-") as log_dir, contextlib.ExitStack() as stack:
        servers = _start_all(models, budget_gib, max_context, requests, overrides, align, Path(log_dir), stack)
        for ms in servers:
            _ready(ms, prompt_len, log)
        for rnd in range(rounds):
            for rate in rates:
                for ms in _rotated(servers, rnd):
                    row = {**_measure(ms, rate, requests, prompt_len, max_tokens, duration_s, seed + rnd),
                           "round": rnd}
                    log(f"round {rnd} {ms.preset} {ms.mode} rate {rate:g}: {row['completed']}/{requests} done, "
                        f"{row['output_tok_per_s']:.0f} tok/s, peak {row['peak_concurrent']}, load "
                        f"{row['load_avg_1m'][0]:.1f}")
                    rows.append(row)
    runs = median_over_rounds(rows)
    return {"benchmark": "serve", "aligned_admission": align, "kv_budget_gib": budget_gib, "max_context": max_context,
            "requests": requests, "prompt_len": prompt_len, "max_tokens": max_tokens, "duration_limit_s": duration_s,
            "interleaved": True, "rounds": rounds, "runs": runs, "runs_by_round": rows, "ratios": ratios(runs)}


def _start_all(models, budget_gib, max_context, max_queue, overrides, align, log_dir: Path,
               stack: contextlib.ExitStack) -> list[ModelServer]:
    """Every server's process, launched together (their compiles overlap); each is stopped when `stack` closes."""
    out = []
    for preset, mode in models:
        mode_name = mode or ("vanilla" if "vanilla" in preset else "hiergen")
        server = peer_servers.preset(f"{preset}-{mode_name}", preset, mode, budget_gib, max_context, max_queue, align,
                                     overrides, log_dir)
        stack.callback(server.stop)
        out.append(ModelServer(preset, mode_name, server))
    return out


def _ready(ms: ModelServer, prompt_len: int, log) -> None:
    """Wait for the server, read its slot pool, send one warm-up request, then freeze it until its turn."""
    ms.server.wait_ready(START_TIMEOUT_S)
    ms.slots, ms.slot_bytes = ms.server.slot_pool()
    warm = {"model": ms.preset, "prompt": [1] * prompt_len, "max_tokens": 2}
    httpx.post(f"{ms.server.url}/v1/completions", json=warm, timeout=600).raise_for_status()
    ms.server.freeze()
    log(f"{ms.preset} {ms.mode}: {ms.slots} slots, {ms.slot_bytes:,} bytes per slot")


def _rotated(servers: list, rnd: int) -> list:
    """Round r starts at server r: no server is always the first after a rate change."""
    k = rnd % len(servers)
    return servers[k:] + servers[:k]


def _measure(ms: ModelServer, rate, requests, prompt_len, max_tokens, duration_s, seed) -> dict:
    """One rate against one server, the others frozen; the machine may be shared, so its load is recorded."""
    ms.server.thaw()
    try:
        load_before = os.getloadavg()[0]
        records, peak, elapsed = asyncio.run(_load(ms.server, ms.preset, rate, requests, prompt_len, max_tokens,
                                                   duration_s, seed))
        load_after = os.getloadavg()[0]
    finally:
        ms.server.freeze()
    return {"model": ms.preset, "mode": ms.mode, "offered_rate": rate, "slots": ms.slots,
            "bytes_per_slot": ms.slot_bytes, **summarize(records, peak, elapsed, max_tokens),
            "load_avg_1m": [load_before, load_after]}


def median_over_rounds(rows: list[dict]) -> list[dict]:
    """One row per (model, mode, rate) in first-seen order: the median over its rounds of every measurement
    and of the load average before and after."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["mode"], r["offered_rate"]), []).append(r)
    out = []
    for same in groups.values():
        row = {k: same[0][k] for k in ("model", "mode", "offered_rate", "slots", "bytes_per_slot")}
        row.update({k: _median([r[k] for r in same]) for k in MEASURED})
        row["load_avg_1m"] = [_median([r["load_avg_1m"][i] for r in same]) for i in (0, 1)]
        row["rounds"] = len(same)
        out.append(row)
    return out


def _median(values: list):
    """An int stays an int when the rounds agree on it (one round: the value itself); NaN if any round's is."""
    m = float(np.median(values))
    return int(m) if all(isinstance(v, int) for v in values) and m.is_integer() else m


def ratios(runs: list[dict]) -> list[dict]:
    """Each PHOTON mode over the vanilla model at the same offered rate."""
    base = {r["offered_rate"]: r for r in runs if r["mode"] == "vanilla"}
    out = []
    for r in runs:
        b = base.get(r["offered_rate"])
        if r["mode"] == "vanilla" or b is None:
            continue
        out.append({"model": r["model"], "mode": r["mode"], "offered_rate": r["offered_rate"],
                    "slots": r["slots"] / b["slots"],
                    "peak_concurrent": r["peak_concurrent"] / max(b["peak_concurrent"], 1),
                    "output_tok_per_s": r["output_tok_per_s"] / max(b["output_tok_per_s"], 1e-9),
                    "ttft_p50": r["ttft_p50_s"] / b["ttft_p50_s"] if b["ttft_p50_s"] else float("nan")})
    return out


def table(data: dict) -> str:
    head = (f"serve load: KV budget {data['kv_budget_gib']:g} GiB, context {data['max_context']}, "
            f"{data['requests']} requests of {data['prompt_len']} + {data['max_tokens']} tokens (Poisson arrivals), "
            f"servers interleaved, median of {data['rounds']} round(s)")
    cols = f"{'model':<14}{'mode':<9}{'rate':>6}{'slots':>7}{'done':>6}{'req/s':>8}{'tok/s':>8}" \
           f"{'TTFT p50':>10}{'p99':>8}{'ITL p50':>9}{'p99':>8}{'peak':>6}{'load 1m':>12}"
    lines = [head, cols]
    for r in data["runs"]:
        load = "{:.1f}-{:.1f}".format(*r["load_avg_1m"])
        lines.append(f"{r['model']:<14}{r['mode']:<9}{r['offered_rate']:>6g}{r['slots']:>7}{r['completed']:>6g}"
                     f"{r['req_per_s']:>8.2f}{r['output_tok_per_s']:>8.0f}{r['ttft_p50_s']:>10.2f}"
                     f"{r['ttft_p99_s']:>8.2f}{1e3 * r['itl_p50_s']:>7.0f}ms{1e3 * r['itl_p99_s']:>6.0f}ms"
                     f"{r['peak_concurrent']:>6g}{load:>12}")
    if data["ratios"]:
        lines.append("PHOTON / vanilla at the same offered rate:")
        for q in data["ratios"]:
            lines.append(f"  {q['model']} {q['mode']} rate {q['offered_rate']:g}: slots {q['slots']:.1f}x, "
                         f"peak concurrent {q['peak_concurrent']:.1f}x, output tok/s {q['output_tok_per_s']:.2f}x, "
                         f"TTFT p50 {q['ttft_p50']:.2f}x")
    return "\n".join(lines)


def plot(data: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    keys = sorted({(r["model"], r["mode"]) for r in data["runs"]})
    for i, key in enumerate(keys):
        rows = sorted((r for r in data["runs"] if (r["model"], r["mode"]) == key), key=lambda r: r["offered_rate"])
        x = [r["offered_rate"] for r in rows]
        label, color = f"{key[0]} {key[1]} ({rows[0]['slots']} slots)", f"C{i}"
        a.plot(x, [r["output_tok_per_s"] for r in rows], marker="o", color=color, label=label)
        b.plot(x, [r["ttft_p50_s"] for r in rows], marker="o", color=color, label=f"{label} TTFT p50")
        b.plot(x, [r["itl_p50_s"] for r in rows], marker="x", linestyle="--", color=color, label=f"{label} ITL p50")
    a.set(xlabel="offered load (requests/s)", ylabel="output tokens/s", title="throughput")
    b.set(xlabel="offered load (requests/s)", ylabel="seconds", yscale="log", title="latency")
    a.legend(fontsize=7)
    b.legend(fontsize=6)
    fig.suptitle(f"photon-jax serve, KV budget {data['kv_budget_gib']:g} GiB, context {data['max_context']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
