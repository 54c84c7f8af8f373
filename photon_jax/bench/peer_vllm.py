"""Beside vLLM: the same client (`vllm bench serve`), the same weights, equal KV bytes, four servers.

    python -m photon_jax.bench.peer_vllm --vanilla-run RUN --photon-run RUN --export HF_DIR \\
        --vllm-bin .venv-vllm/bin/vllm-peer --out experiments/results/bench/peer_vllm

(scripts/peer_vllm.sh builds everything this needs from a fresh clone and runs it.)

Servers: vLLM's CPU engine on the vanilla run exported to Hugging Face format, and `photon-jax serve` on
that same vanilla run, on a PHOTON run in hiergen and in recgen. KV bytes are equal: `--slots` vanilla
sequences of `--max-context` tokens (vLLM: --kv-cache-memory-bytes = their KV bytes, --max-num-seqs =
slots; ours: that many slots, each also holding its row state, so ours holds slightly more); the PHOTON
servers get the same budget and as many slots as it holds. Both sides run --dtype (float32 by default),
prefix caching off. Before anything is timed, greedy text from the two vanilla servers must be equal.

Loads: Poisson arrivals at each --rates, and closed loops of each --concurrency (request rate inf,
--max-concurrency C); every request forced to --output-len tokens (--ignore-eos, temperature 0). A
warm-up round is run and dropped; then --rounds rounds, interleaved (round, load, server), only the
server under test running (peer_servers.py freezes the others). Reported per server and load: the
median over rounds of the client's output tokens/s, TTFT / TPOT / ITL / E2EL p50 and p99, goodput under
--slo, completed requests and tokens, and the peak of the server's running sequences (polled).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from photon_jax.bench import peer_servers
from photon_jax.data.loading.pipeline import eval_batches
from photon_jax.errors import UserError
from photon_jax.runs.workdir import data_dir_for, load_run

METRICS = ("output_throughput", "request_goodput", "completed", "total_output_tokens", "mean_ttft_ms",
           "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "p99_tpot_ms", "median_itl_ms", "p99_itl_ms",
           "median_e2el_ms", "p99_e2el_ms")
POLL_S = 0.05


def kv_bytes_per_sequence(cfg, max_context: int, dtype_bytes: int) -> int:
    """Keys and values of one vanilla sequence: what vLLM's --kv-cache-memory-bytes counts."""
    return 2 * cfg.num_layers * cfg.kv_heads * cfg.head_width * max_context * dtype_bytes


def client_argv(args, server, load: dict, result: Path) -> list[str]:
    argv = [args.vllm_bin, "bench", "serve", "--backend", "openai", "--base-url", server.url,
            "--endpoint", "/v1/completions", "--model", args.served_name, "--tokenizer", args.export,
            "--num-prompts", str(load["prompts"]), "--request-rate", str(load.get("rate", "inf")),
            "--ignore-eos", "--temperature", "0", "--seed", str(args.seed), "--percentile-metrics",
            "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99", "--goodput", *args.slo, "--save-result",
            "--result-dir", str(result.parent), "--result-filename", result.name, "--disable-tqdm"]
    if "concurrency" in load:
        argv += ["--max-concurrency", str(load["concurrency"])]
    if load.get("text"):
        argv += ["--dataset-name", "custom", "--dataset-path", args.text_path, "--custom-output-len",
                 str(args.output_len), "--skip-chat-template"]
    else:
        argv += ["--dataset-name", "random", "--random-input-len", str(args.input_len), "--random-output-len",
                 str(args.output_len)]
    return argv


async def _poll(server, peak: list, stop: asyncio.Event):
    while not stop.is_set():
        try:
            peak[0] = max(peak[0], await asyncio.to_thread(server.running))
        except httpx.HTTPError:
            pass
        await asyncio.sleep(POLL_S)


async def _timed(argv, server, timeout_s):
    peak, stop = [0.0], asyncio.Event()
    poller = asyncio.create_task(_poll(server, peak, stop))
    proc = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=timeout_s)
    stop.set()
    await poller
    return proc, peak[0]


def run_load(args, server, load: dict, result: Path) -> dict:
    server.thaw()
    try:
        t0 = time.time()
        before = server.engine_seconds()
        proc, peak = asyncio.run(_timed(client_argv(args, server, load, result), server, args.timeout))
        spent = {k: v - before[k] for k, v in server.engine_seconds().items()}
    finally:
        server.freeze()
    if proc.returncode != 0 or not result.exists():
        raise UserError(f"vllm bench serve against {server.name} failed ({proc.returncode}): "
                        f"{(proc.stderr or proc.stdout)[-1500:]}")
    data = json.loads(result.read_text())
    row = {k: data.get(k) for k in METRICS}
    if spent.get("round"):  # ours: where the engine thread's time went during this run
        row["engine_share"] = {"decode": spent["decode"] / spent["round"], "insert": spent["insert"] / spent["round"],
                               "host": 1 - (spent["decode"] + spent["insert"]) / spent["round"]}
    row.update(server=server.name, load=load["name"], peak_running=peak, load_avg=os.getloadavg()[0],
               started=t0, failed=data.get("num_prompts", load["prompts"]) - (data.get("completed") or 0))
    return row


def greedy_text(server, prompt: str, name: str, tokens: int) -> str:
    server.thaw()
    try:
        r = httpx.post(f"{server.url}/v1/completions", json={"model": name, "prompt": prompt, "max_tokens": tokens,
                                                              "temperature": 0}, timeout=300)
    finally:
        server.freeze()
    if r.status_code != 200:
        raise UserError(f"{server.name} refused the greedy check: {r.status_code} {r.text[:300]}")
    return r.json()["choices"][0]["text"]


def write_text_prompts(run, workdir: str, path: str, tokens: int, count: int) -> None:
    """Windows of `tokens` tokens of the validation split (plays no training step saw), as text, JSONL."""
    rows = []
    for batch in eval_batches(data_dir_for(run.cfg, Path(workdir)), "validation", tokens, 16):
        rows += [run.tokenizer.decode([int(t) for t in row]) for row in batch["tokens"]]
        if len(rows) >= count:
            break
    if len(rows) < count:
        raise UserError(f"the validation split holds only {len(rows)} windows of {tokens} tokens")
    Path(path).write_text("".join(json.dumps({"prompt": r}) + "\n" for r in rows[:count]))


def loads(args) -> list[dict]:
    out = [{"name": f"{r:g} req/s", "rate": r, "prompts": max(8, int(r * args.seconds))} for r in args.rates]
    out += [{"name": f"{c} concurrent", "concurrency": c, "prompts": max(c, int(c * args.waves))}
            for c in args.concurrency]
    if args.text_prompts:
        c = args.concurrency[0]
        out.append({"name": f"{c} concurrent, play text", "concurrency": c, "prompts": c * 2, "text": True})
    return out


def summarize(rows: list[dict], reference: str) -> list[dict]:
    """Median over rounds per (server, load), and output tokens/s and TPOT as ratios to the reference."""
    out = []
    keys = dict.fromkeys((r["load"], r["server"]) for r in rows)  # in the order they ran
    for load, server in keys:
        mine = [r for r in rows if r["load"] == load and r["server"] == server]
        med = {k: statistics.median(r[k] for r in mine if r[k] is not None) for k in METRICS
               if any(r[k] is not None for r in mine)}
        shares = [r["engine_share"] for r in mine if "engine_share" in r]
        if shares:
            med["engine_share"] = {k: statistics.median(x[k] for x in shares) for k in shares[0]}
        med.update(load=load, server=server, rounds=len(mine), peak_running=max(r["peak_running"] for r in mine),
                   failed=max(r["failed"] for r in mine), load_avg=statistics.median(r["load_avg"] for r in mine))
        out.append(med)
    for row in out:
        ref = next((r for r in out if r["load"] == row["load"] and r["server"] == reference), None)
        if ref:
            row["throughput_vs_ref"] = row["output_throughput"] / ref["output_throughput"]
            row["tpot_vs_ref"] = row["median_tpot_ms"] / ref["median_tpot_ms"]
    return out


def table(summary: list[dict], reference: str) -> str:
    head = ("| load | server | output tok/s | x " + reference + " | TTFT p50 / p99 ms | TPOT p50 / p99 ms | "
            "ITL p50 / p99 ms | E2EL p50 ms | goodput req/s | completed | peak running |")
    lines = [head, "|" + "---|" * 11]
    nan = float("nan")
    for r in summary:
        r = {k: nan for k in METRICS} | r
        lines.append(f"| {r['load']} | {r['server']} | {r['output_throughput']:.0f} | "
                     f"{r.get('throughput_vs_ref', float('nan')):.2f} | {r['median_ttft_ms']:.0f} / "
                     f"{r['p99_ttft_ms']:.0f} | {r['median_tpot_ms']:.1f} / {r['p99_tpot_ms']:.1f} | "
                     f"{r['median_itl_ms']:.1f} / {r['p99_itl_ms']:.1f} | {r['median_e2el_ms']:.0f} | "
                     f"{r.get('request_goodput', float('nan')):.2f} | {r['completed']:.0f} (failed "
                     f"{r['failed']}) | {r['peak_running']:.0f} |")
    return "\n".join(lines) + "\n"


def plot(summary: list[dict], rates: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for server in dict.fromkeys(r["server"] for r in summary):
        ys = [next((r["output_throughput"] for r in summary if r["server"] == server and r["load"] == f"{x:g} req/s"),
                   None) for x in rates]
        ax.plot(rates, ys, marker="o", label=server)
    ax.set_xlabel("offered load, requests/s (Poisson)")
    ax.set_ylabel("output tokens/s (vllm bench serve)")
    ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Same client, same weights, equal KV bytes, 2-core CPU", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vanilla-run", required=True)
    p.add_argument("--photon-run", required=True)
    p.add_argument("--export", required=True, help="the vanilla run exported with `photon-jax export`")
    p.add_argument("--vllm-bin", required=True, help="vLLM's CLI (scripts/setup_vllm.sh: .venv-vllm/bin/vllm-peer)")
    p.add_argument("--out", required=True)
    p.add_argument("--served-name", default="peer")
    p.add_argument("--slots", type=int, default=32)
    p.add_argument("--max-context", type=int, default=128)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")], default=[2.0, 8.0, 32.0])
    p.add_argument("--seconds", type=float, default=8.0, help="arrival span of a rate load (prompts = rate x this)")
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[32, 256])
    p.add_argument("--waves", type=float, default=3.0, help="prompts of a closed load = concurrency x this")
    p.add_argument("--input-len", type=int, default=32)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--text-prompts", action="store_true",
                   help="add a load whose prompts are --input-len-token windows of the held-out plays")
    p.add_argument("--slo", nargs="+", default=["tpot:50"], help="vllm bench serve --goodput (default tpot:50)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=900.0, help="seconds one client run may take")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    run = load_run(args.vanilla_run)
    cfg = run.cfg.model
    args.text_path = str(out / "held_out_prompts.jsonl")
    if args.text_prompts:
        write_text_prompts(run, args.vanilla_run, args.text_path, args.input_len, 4 * max(args.concurrency))
    dtype_bytes = 4 if args.dtype == "float32" else 2
    kv_seq = kv_bytes_per_sequence(cfg, args.max_context, dtype_bytes)
    over = [f"model.dtype={args.dtype}"]
    servers = [peer_servers.vllm("vLLM vanilla", args.vllm_bin, args.export, args.served_name, args.max_context,
                                 args.slots * kv_seq, args.slots, args.dtype, logs),
               peer_servers.ours("ours vanilla", args.vanilla_run, args.served_name, args.max_context,
                                 ["--slots", str(args.slots)], "vanilla", over, logs)]
    try:
        for s in servers:
            s.wait_ready(900)
            s.freeze()
        ours_vanilla_bytes = _slot_bytes(logs / "ours vanilla.log")
        budget_gib = args.slots * ours_vanilla_bytes / 2**30
        for mode in ("hiergen", "recgen"):
            s = peer_servers.ours(f"ours PHOTON {mode}", args.photon_run, args.served_name, args.max_context,
                                  ["--kv-budget-gib", repr(budget_gib)], mode, over, logs)
            servers.append(s)
            s.wait_ready(900)
            s.freeze()
        prompt = "ROMEO:\nBut, soft! what light through yonder window breaks?"
        texts = {s.name: greedy_text(s, prompt, args.served_name, 24) for s in servers[:2]}
        if texts["vLLM vanilla"] != texts["ours vanilla"]:
            raise UserError(f"greedy text differs on the same weights: vLLM {texts['vLLM vanilla']!r} vs ours "
                            f"{texts['ours vanilla']!r}")
        rows = []
        plan = loads(args)
        for s in servers:  # warm-up, dropped
            run_load(args, s, {"name": "warm-up", "concurrency": 8, "prompts": 16}, out / "raw" / f"warm-{s.port}.json")
        for rnd in range(args.rounds):
            for load in plan:
                for s in servers:
                    name = f"r{rnd}-{load['name']}-{s.name}".replace(" ", "_").replace("/", "per")
                    rows.append({**run_load(args, s, load, out / "raw" / f"{name}.json"), "round": rnd})
                    (out / "raw" / "runs_so_far.json").write_text(json.dumps(rows, indent=1))  # a crash keeps them
                    print(f"{s.name:22s} {load['name']:28s} round {rnd}: {rows[-1]['output_throughput']:.0f} tok/s, "
                          f"TPOT p50 {rows[-1]['median_tpot_ms']:.1f} ms", flush=True)
        summary = summarize(rows, "vLLM vanilla")
        result = {"benchmark": "serve beside vLLM", "client": "vllm bench serve --backend openai",
                  "commit": _commit(), "command": "scripts/peer_vllm.sh " + " ".join(argv or sys.argv[1:]),
                  "dtype": args.dtype, "max_context": args.max_context, "slots_vanilla": args.slots,
                  "kv_bytes_vllm": args.slots * kv_seq, "ours_vanilla_slot_bytes": ours_vanilla_bytes,
                  "budget_gib_ours": budget_gib, "greedy_text": texts, "loads": plan, "rounds": args.rounds,
                  "slo": args.slo, "servers": {s.name: _banner(s) for s in servers}, "runs": rows,
                  "summary": summary}
        (out / "peer_vllm.json").write_text(json.dumps(result, indent=1))
        (out / "peer_vllm.md").write_text(table(summary, "vLLM vanilla"))
        plot(summary, args.rates, out / "peer_vllm.png")
        print(table(summary, "vLLM vanilla"))
    finally:
        for s in servers:
            s.stop()
    return 0


def _commit() -> str:
    """The code that produced the numbers (with "+dirty" when the tree had changes)."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "photon_jax"], capture_output=True, text=True).stdout
    return head + ("+dirty" if dirty.strip() else "")


def _slot_bytes(log: Path) -> int:
    m = re.search(r"([\d,]+) bytes per slot", log.read_text())
    if not m:
        raise UserError(f"no 'bytes per slot' in {log}")
    return int(m[1].replace(",", ""))


def _banner(server) -> str:
    text = server.log_path.read_text(errors="replace")
    line = next((x for x in text.splitlines() if "slots of" in x or "KV cache" in x), "")
    return line.strip()[:300]


if __name__ == "__main__":
    raise SystemExit(main())
