"""`photon-jax serve` over two processes x 4 CPU devices (photon_jax/serve/lockstep.py).

Both processes get launch/local.py's environment; the preset's random weights are sharded over
both (mesh data=2,fsdp=2,tensor=2). Process 0 answers HTTP; greedy completions, streamed and not,
two of them concurrent, must be the tokens `generate` gives on the same weights in this process.
SIGTERM to both (what the launcher and SLURM send): process 0 drains and stops process 1; both exit 0.
"""

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from photon_jax.bench.models import random_params
from photon_jax.config import load_config
from photon_jax.generation import generate
from photon_jax.generation.sampling import GREEDY

pytestmark = pytest.mark.usefixtures("fast_compile")

REPO = Path(__file__).resolve().parent.parent
FAST_XLA = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
            "--xla_cpu_use_fusion_emitters=false")
LEVELS = "[{chunk: 2, encoder_layers: 1, decoder_layers: 1}, {chunk: 4, encoder_layers: 1, decoder_layers: 1}]"
MODEL = ["model.vocab_size=384", "model.width=32", "model.ffn_width=64", "model.num_heads=4", "model.num_kv_heads=2",
         "model.dtype=float32", f"model.levels={LEVELS}", "model.block_local_lower=true"]
NEW = 16
PROMPTS = [[5, 6, 7, 8, 9], [11, 300, 42, 17, 99, 2, 250, 31, 64, 128, 7], [1, 2, 3], [200] * 13]


def _launcher():
    spec = importlib.util.spec_from_file_location("launch_local", REPO / "launch" / "local.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _complete(url, prompt, stream, logprobs=None):
    body = {"model": "photon-tiny", "prompt": prompt, "max_tokens": NEW, "temperature": 0, "stream": stream}
    if logprobs is not None:
        body["logprobs"] = logprobs
    if not stream:
        r = httpx.post(f"{url}/v1/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        return [int(t) for t in choice["text"].split()], choice
    text, finish = "", None
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                choice = json.loads(line[6:])["choices"][0]
                text += choice["text"]
                finish = choice["finish_reason"] or finish
    return [int(t) for t in text.split()], {"finish_reason": finish}


@pytest.mark.slow  # 50-75 s on 2 busy CPU cores, most of it start-up and compiles
def test_two_processes_serve_the_tokens_of_generate(tmp_path):
    launch = _launcher()
    port, http_port = launch.free_port(), launch.free_port()
    url = f"http://127.0.0.1:{http_port}"
    command = [sys.executable, "-m", "photon_jax.cli.main", "serve", "--preset", "photon-tiny", "--port",
               str(http_port), "--slots", "4", "--max-context", "32", "--mesh", "data=2,fsdp=2,tensor=2", *MODEL]
    start = time.perf_counter()
    procs, logs = [], []
    for i in range(2):
        env = launch.worker_env(dict(os.environ, XLA_FLAGS=FAST_XLA, PYTHONPATH=str(REPO)), i, 2, 4, port)
        logs.append(open(tmp_path / f"p{i}.log", "w"))  # noqa: SIM115 (closed below)
        procs.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=logs[-1], stderr=subprocess.STDOUT))

    def log(i):
        return (tmp_path / f"p{i}.log").read_text()[-3000:]

    try:
        # the reference, on the same random weights, while the servers compile
        cfg = load_config(preset="photon-tiny", overrides=MODEL).model
        ref = generate(cfg, random_params(cfg), PROMPTS, max_new_tokens=NEW, sampling=GREEDY).tokens
        deadline = time.monotonic() + 240
        while True:
            assert all(p.poll() is None for p in procs), log(0) + log(1)
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, log(0) + log(1)
            time.sleep(0.2)
        ready = time.perf_counter() - start
        got, choice = _complete(url, PROMPTS[0], stream=False, logprobs=1)
        assert got == ref[0][0] and choice["finish_reason"] == "length"
        # greedy: each drawn token is the top one of the logits process 0 read back (the "logits" program)
        for token, top in zip(choice["logprobs"]["tokens"], choice["logprobs"]["top_logprobs"]):
            assert list(top) == [token]
        got, choice = _complete(url, PROMPTS[1], stream=True)
        assert got == ref[1][0] and choice["finish_reason"] == "length"
        results = {}
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, _complete(url, PROMPTS[i], i == 3)))
                    for i in (2, 3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert results[2][0] == ref[2][0] and results[3][0] == ref[3][0]
        metrics = httpx.get(f"{url}/metrics").text
        assert "photon_serve_peak_busy_slots 2.0" in metrics  # the two were in flight together
        for p in procs:  # what the launcher (or SLURM) does: SIGTERM to every process
            p.send_signal(signal.SIGTERM)
        codes = [p.wait(60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in logs:
            f.close()
    assert codes == [0, 0], log(0) + log(1)
    assert "photon-jax serve: stopped" in log(0) and "process 1: stopped" in log(1)
    print(f"2 processes x 4 devices: ready in {ready:.1f} s, done in {time.perf_counter() - start:.1f} s")
