"""`photon-jax bench serve`: an open-loop Poisson load against a real `photon-jax serve` process per model.

Every model gets its own server process (random weights of its preset: speed and memory do not depend
on their values) at the SAME KV budget and context, so the slot pool of each holds what its bytes per
slot allow. The client is open-loop: request i is sent at the i-th arrival of a Poisson process of the
offered rate, whatever the server's state (a closed loop would hide queueing). Every request has the
same prompt length and is forced to exactly max_tokens tokens (random weights, no EOS: the server's
text is the token ids). Streams are read to the end; TTFT = send -> first token, ITL = gaps between a
request's tokens. Peak concurrent sequences = the most busy slots /metrics showed during the run
(polled every 20 ms). Loopback only; the run is bounded by --requests and a duration limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import numpy as np

from photon_jax.errors import UserError

POLL_S = 0.02


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`photon-jax serve --preset NAME ...` on a free loopback port; stopped with SIGTERM."""

    def __init__(self, preset: str, mode: str | None, budget_gib: float, max_context: int, max_queue: int,
                 overrides=(), log=print, start_timeout_s: float = 900, align: bool = True):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "photon_jax.cli.main", "serve", "--preset", preset, "--port", str(self.port),
                "--kv-budget-gib", str(budget_gib), "--max-context", str(max_context), "--max-queue", str(max_queue),
                "--served-model-name", preset, *(["--mode", mode] if mode else []), *([] if align else ["--no-align"]),
                *overrides]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=dict(os.environ))
        self.banner = ""
        deadline = time.monotonic() + start_timeout_s
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line and self.proc.poll() is not None:
                raise UserError(f"the server for {preset} exited ({self.proc.returncode}): {self.banner[-2000:]}")
            self.banner += line
            if "listening on" in line:
                break
        m = re.search(r"(\d+) slots of \d+ tokens, ([\d,]+) bytes per slot", self.banner)
        if not m:
            raise UserError(f"the server for {preset} did not start: {self.banner[-2000:]}")
        self.slots, self.slot_bytes = int(m[1]), int(m[2].replace(",", ""))
        log(self.banner.strip().splitlines()[-2])

    def metric(self, name: str) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return float(re.search(rf"^{name} (\S+)$", text, re.MULTILINE)[1])

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(60)
        if self.proc.poll() is None:
            self.proc.kill()


async def _one(client, url, body, t_send, out):
    rec = {"sent": t_send, "tokens": [], "status": None}
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
    except httpx.HTTPError as e:
        rec["status"] = f"error: {e}"
    out.append(rec)


async def _poll_busy(server: ServerProcess, peak: list, stop: asyncio.Event):
    async with httpx.AsyncClient(timeout=10) as client:
        while not stop.is_set():
            text = (await client.get(f"{server.url}/metrics")).text
            peak[0] = max(peak[0], float(re.search(r"^photon_serve_busy_slots (\S+)$", text, re.MULTILINE)[1]))
            await asyncio.sleep(POLL_S)


async def _load(server, model, rate, requests, prompt_len, max_tokens, duration_s, seed):
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate, size=requests)
    vocab = 100  # any ids in the vocabulary: the weights are random
    out, peak, stop = [], [0.0], asyncio.Event()
    limits = httpx.Limits(max_connections=requests + 8, max_keepalive_connections=requests + 8)
    async with httpx.AsyncClient(timeout=duration_s, limits=limits) as client:
        poller = asyncio.create_task(_poll_busy(server, peak, stop))
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
    ok = [r for r in records if r["status"] == 200 and len(r["tokens"]) == max_tokens]
    ttft = [r["tokens"][0] - r["sent"] for r in ok]
    itl = [b - a for r in ok for a, b in zip(r["tokens"], r["tokens"][1:])]
    return {"completed": len(ok), "refused_or_failed": len(records) - len(ok), "elapsed_s": elapsed,
            "req_per_s": len(ok) / elapsed, "output_tok_per_s": sum(len(r["tokens"]) for r in ok) / elapsed,
            "ttft_p50_s": _pct(ttft, 50), "ttft_p99_s": _pct(ttft, 99), "itl_p50_s": _pct(itl, 50),
            "itl_p99_s": _pct(itl, 99), "peak_concurrent": int(peak)}


def bench_serve(models: list[tuple[str, str | None]], budget_gib: float, max_context: int, rates: list[float],
                requests: int, prompt_len: int, max_tokens: int, duration_s: float, overrides=(), seed: int = 0,
                log=print, align: bool = True) -> dict:
    """models: (preset, mode or None) pairs. Returns the report dict (JSON-ready)."""
    if prompt_len + max_tokens > max_context:
        raise UserError(f"--prompt-len {prompt_len} + --max-tokens {max_tokens} exceed --max-context {max_context}")
    runs = []
    for preset, mode in models:
        server = ServerProcess(preset, mode, budget_gib, max_context, max_queue=requests, overrides=overrides, log=log,
                               align=align)
        try:
            warm = {"model": preset, "prompt": [1] * prompt_len, "max_tokens": 2}
            httpx.post(f"{server.url}/v1/completions", json=warm, timeout=600).raise_for_status()
            for rate in rates:
                load_before = os.getloadavg()[0]  # the machine may be shared: say how busy it was
                records, peak, elapsed = asyncio.run(_load(server, preset, rate, requests, prompt_len, max_tokens,
                                                           duration_s, seed))
                row = {"model": preset, "mode": mode or ("vanilla" if "vanilla" in preset else "hiergen"),
                       "offered_rate": rate, "slots": server.slots, "bytes_per_slot": server.slot_bytes,
                       **summarize(records, peak, elapsed, max_tokens),
                       "load_avg_1m": [load_before, os.getloadavg()[0]]}
                log(f"{preset} {row['mode']} rate {rate:g}: {row['completed']}/{requests} done, "
                    f"{row['output_tok_per_s']:.0f} tok/s, peak {row['peak_concurrent']}")
                runs.append(row)
        finally:
            server.stop()
    return {"benchmark": "serve", "aligned_admission": align, "kv_budget_gib": budget_gib, "max_context": max_context,
            "requests": requests,
            "prompt_len": prompt_len, "max_tokens": max_tokens, "duration_limit_s": duration_s, "runs": runs,
            "ratios": ratios(runs)}


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
            f"{data['requests']} requests of {data['prompt_len']} + {data['max_tokens']} tokens (Poisson arrivals)")
    cols = f"{'model':<14}{'mode':<9}{'rate':>6}{'slots':>7}{'done':>6}{'req/s':>8}{'tok/s':>8}" \
           f"{'TTFT p50':>10}{'p99':>8}{'ITL p50':>9}{'p99':>8}{'peak':>6}"
    lines = [head, cols]
    for r in data["runs"]:
        lines.append(f"{r['model']:<14}{r['mode']:<9}{r['offered_rate']:>6g}{r['slots']:>7}{r['completed']:>6}"
                     f"{r['req_per_s']:>8.2f}{r['output_tok_per_s']:>8.0f}{r['ttft_p50_s']:>10.2f}"
                     f"{r['ttft_p99_s']:>8.2f}{1e3 * r['itl_p50_s']:>7.0f}ms{1e3 * r['itl_p99_s']:>6.0f}ms"
                     f"{r['peak_concurrent']:>6}")
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
