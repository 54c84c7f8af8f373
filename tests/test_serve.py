"""`photon-jax serve` end to end: a real server process on loopback over a tiny trained run, driven by the
`openai` client (and httpx for what the client hides: raw bodies, status codes, disconnects).

One module-scoped server answers most tests (6 slots of 128 tokens, an API key); a second one, started
from the same compiled programs (the persistent compile cache), has a wait queue of one for the 429 test
and is then stopped with SIGTERM. Greedy text through the server equals `photon-jax generate`; every
family and mode is covered in-process by tests/test_serve_engine.py.
"""

import contextlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import openai
import pytest

from photon_jax import __version__
from photon_jax.cli.main import main
from photon_jax.data.preparation.corpus import shakespeare_files
from photon_jax.eval.scoring import make_span_scorer
from photon_jax.generation import generate
from photon_jax.generation.sampling import GREEDY
from photon_jax.runs.workdir import load_run
from photon_jax.sharding import strip_boxes

pytestmark = pytest.mark.usefixtures("fast_compile")

KEY = "test-key"
SLOTS = 6
CONTEXT = 128
LEVELS = "[{chunk: 2, encoder_layers: 1, decoder_layers: 1}, {chunk: 4, encoder_layers: 1, decoder_layers: 1}]"
TINY = ["model.vocab_size=384", "model.width=32", "model.ffn_width=64", "model.num_heads=4", "model.num_kv_heads=2",
        "model.dtype=float32", f"model.levels={LEVELS}", "model.block_local_lower=true", "data.seq_len=32",
        "train.batch_size=8", "train.steps=2", "train.warmup_steps=1", "train.eval_batches=1"]
PROMPTS = ["ROMEO.\nWhat light", "JULIET.\nO Romeo, Romeo, wherefore art thou", "A", "Enter", "To be, or not",
           "Now is the winter of our discontent made glorious", "First Citizen.\nBefore we proceed", "I"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, fast_compile):
    root = tmp_path_factory.mktemp("serve")
    corpus = root / "plays"
    corpus.mkdir()
    for path in shakespeare_files()[:4]:
        (corpus / path.name).write_text(path.read_text(encoding="utf-8")[:6000], encoding="utf-8")
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", "--workdir", str(root / "run"), *TINY, f"data.corpus={corpus}"]) == 0
    return root / "run"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, workdir, log_path, *extra):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS="1")  # the tests' own setting (fast_compile)
        self.log_file = open(log_path, "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "photon_jax.cli.main", "serve", "--workdir", str(workdir), "--port",
             str(self.port), "--slots", str(SLOTS), "--max-context", str(CONTEXT), *extra],
            stdout=self.log_file, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            time.sleep(0.2)
        raise AssertionError("server did not start: " + self.log())

    def log(self) -> str:
        return self.log_path.read_text()

    def metric(self, name: str) -> float:
        text = httpx.get(f"{self.url}/metrics").text
        m = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
        assert m, text
        return float(m[1])

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)
        self.log_file.close()


@pytest.fixture(scope="module")
def server(run_dir, tmp_path_factory):
    tokenizer_dir = tmp_path_factory.mktemp("harness_tokenizer")
    s = Server(run_dir, tmp_path_factory.mktemp("log") / "server.log", "--api-key", KEY, "--harness-tokenizer",
               str(tokenizer_dir))
    s.harness_tokenizer = tokenizer_dir
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)


@pytest.fixture(scope="module")
def loaded(run_dir):
    return load_run(run_dir)


def _post(server, body, key=KEY, raw=None):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{server.url}/v1/completions", headers=headers, timeout=120,
                      content=raw if raw is not None else json.dumps(body))


def test_completion_equals_generate_streamed_and_not(server, client, run_dir, capsys):
    prompt, new = PROMPTS[0], 24
    capsys.readouterr()
    assert main(["generate", "--workdir", str(run_dir), "--prompt", prompt, "--max-new-tokens", str(new),
                 "--temperature", "0", "--json"]) == 0
    expected = json.loads(capsys.readouterr().out)["samples"][0]
    whole = client.completions.create(model="photon-tiny", prompt=prompt, max_tokens=new, temperature=0)
    assert whole.choices[0].text == expected["text"]
    assert whole.choices[0].finish_reason == ("length" if expected["finish"] == "length" else "stop")
    assert whole.usage.completion_tokens == expected["tokens"]
    assert whole.usage.prompt_tokens == load_run(run_dir).tokenizer.encode(prompt).__len__()

    chunks = list(client.completions.create(model="photon-tiny", prompt=prompt, max_tokens=new, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected["text"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert len([c for c in chunks if c.choices]) > 1  # streamed in pieces
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_staggered_requests_equal_generate(server, client, loaded):
    new = 40
    results = [None] * len(PROMPTS)

    def ask(i):
        results[i] = client.completions.create(model="photon-tiny", prompt=PROMPTS[i], max_tokens=new, temperature=0)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
        time.sleep(0.01)  # staggered arrivals: different lengths join at different steps
    for t in threads:
        t.join(120)
    assert server.metric("photon_serve_peak_busy_slots") >= 4
    tok = loaded.tokenizer
    ids = [tok.encode(p) for p in PROMPTS]
    ref = generate(loaded.cfg.model, loaded.params, ids, max_new_tokens=new, sampling=GREEDY, eos_id=tok.eos_id)
    for i, r in enumerate(results):
        body = [t for t in ref.tokens[i][0] if t != tok.eos_id]
        assert r.choices[0].text == tok.decode(body), PROMPTS[i]


def test_seeded_sample_same_alone_and_under_load(server, client):
    ask = {"model": "photon-tiny", "prompt": PROMPTS[1], "max_tokens": 30, "temperature": 0.9, "seed": 11}
    alone = client.completions.create(**ask).choices[0].text
    other = [None] * 5

    def noise(i):
        other[i] = client.completions.create(model="photon-tiny", prompt=PROMPTS[i + 2], max_tokens=30, temperature=1)

    threads = [threading.Thread(target=noise, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    loaded_text = client.completions.create(**ask).choices[0].text
    for t in threads:
        t.join(120)
    assert loaded_text == alone
    three = client.completions.create(**ask, n=3)
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert three.choices[0].text == alone  # sample 0 draws as the single request does
    assert len({c.text for c in three.choices}) > 1


def test_stop_string_and_logprobs(server, client, loaded):
    base = client.completions.create(model="photon-tiny", prompt=PROMPTS[0], max_tokens=24, temperature=0)
    text = base.choices[0].text
    stop = text[5:7]
    cut = client.completions.create(model="photon-tiny", prompt=PROMPTS[0], max_tokens=24, temperature=0, stop=[stop])
    assert cut.choices[0].text == text[: text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"

    lp = client.completions.create(model="photon-tiny", prompt=PROMPTS[0], max_tokens=6, temperature=0, logprobs=2)
    info = lp.choices[0].logprobs
    assert len(info.token_logprobs) == 6 and all(v <= 0 for v in info.token_logprobs)
    for token, value, top in zip(info.tokens, info.token_logprobs, info.top_logprobs):
        assert max(top.values()) == pytest.approx(value)  # greedy: the chosen token is the most likely
    assert "".join(info.tokens) == lp.choices[0].text

    # a stop token ends the text but keeps its logprob entry (OpenAI, vLLM; lm-eval's echo scoring counts on it)
    first = int(generate(loaded.cfg.model, loaded.params, [loaded.tokenizer.encode(PROMPTS[0])], max_new_tokens=1,
                         sampling=GREEDY).tokens[0][0][0])
    stopped = client.completions.create(model="photon-tiny", prompt=PROMPTS[0], max_tokens=4, temperature=0,
                                        logprobs=1, extra_body={"stop_token_ids": [first]})
    assert stopped.choices[0].text == "" and stopped.choices[0].finish_reason == "stop"
    assert len(stopped.choices[0].logprobs.token_logprobs) == 1 and stopped.usage.completion_tokens == 1


def test_echo_logprobs_score_the_prompt_as_eval_does(server, client, loaded):
    tok = loaded.tokenizer
    ids = [tok.eos_id, *tok.encode(PROMPTS[1])]  # as lm-evaluation-harness sends a scored request
    r = client.completions.create(model="photon-tiny", prompt=ids, max_tokens=1, temperature=0, echo=True, logprobs=1)
    info = r.choices[0].logprobs
    assert len(info.token_logprobs) == len(ids) + 1 and info.token_logprobs[0] is None
    assert r.choices[0].text.startswith(tok.decode(ids))
    padded = np.zeros((1, -(-len(ids) // 8) * 8), np.int32)  # whole meta-contexts, as eval pads
    padded[0, : len(ids)] = ids
    scores = make_span_scorer(loaded.cfg.model)(strip_boxes(loaded.params), padded, np.asarray([len(ids)]),
                                                np.asarray([len(ids) - 1]))
    assert sum(info.token_logprobs[1:-1]) == pytest.approx(float(scores[0][0]), abs=1e-3)
    stream = _post(server, {"model": "photon-tiny", "prompt": ids, "echo": True, "logprobs": 1, "stream": True})
    assert stream.status_code == 400 and stream.json()["error"]["param"] == "stream"


def test_lm_eval_local_completions_scores_as_photon_jax_eval(server, run_dir, monkeypatch):
    """lm-eval's own API model through /v1/completions (echo + logprobs) gives `photon-jax eval --tasks`'s
    numbers: the bundled multiple-choice task, per request and in its metrics."""
    from lm_eval import simple_evaluate

    from photon_jax.eval.evaluate import evaluate_run_tasks
    from photon_jax.eval.tasks import jsonable, load_task_data, summary_rows, task_manager_for

    task, limit, seq_len = "shakespeare_next_line", 8, 64  # 1 + up to 67 + 36 tokens: contexts are cut on the left
    seeds = dict(random_seed=0, numpy_random_seed=0, fewshot_random_seed=0)
    ref = evaluate_run_tasks(run_dir, [task], limit=limit, log_samples=True, overrides=[f"data.seq_len={seq_len}"])
    monkeypatch.setenv("OPENAI_API_KEY", KEY)  # what local-completions sends as its bearer token
    manager = task_manager_for([task], None)
    load_task_data([task], manager)
    got = jsonable(simple_evaluate(
        model="local-completions", tasks=[task], task_manager=manager, limit=limit, log_samples=True, **seeds,
        model_args={"base_url": f"{server.url}/v1/completions", "model": "photon-tiny", "tokenized_requests": True,
                     "tokenizer_backend": "huggingface", "tokenizer": str(server.harness_tokenizer),
                     "add_bos_token": True, "max_length": seq_len + 1, "num_concurrent": 1, "max_retries": 1}))
    theirs, ours = got["samples"][task], ref["harness"]["samples"][task]
    assert [s["doc_id"] for s in theirs] == [s["doc_id"] for s in ours] and len(ours) == limit
    for a, b in zip(theirs, ours):
        assert a["arguments"] == b["arguments"]
        for (score_a, greedy_a), (score_b, greedy_b) in ((x[0], y[0]) for x, y in zip(a["resps"], b["resps"])):
            assert score_a == pytest.approx(score_b, abs=1e-3) and greedy_a == greedy_b
    expected = {(r["metric"], r["filter"]): r["value"] for r in ref["summary"]}
    assert {(r["metric"], r["filter"]): r["value"] for r in summary_rows(got)} == pytest.approx(expected, abs=1e-9)
    assert set(expected) == {("acc", "none"), ("acc_norm", "none")}


def test_models_health_metrics(server, client):
    assert [m.id for m in client.models.list().data] == ["photon-tiny"]
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    text = httpx.get(f"{server.url}/metrics").text
    for name in ("photon_serve_queue_length", "photon_serve_busy_slots", "photon_serve_kv_bytes_in_use",
                 "photon_serve_generated_tokens_total", "photon_serve_time_to_first_token_seconds_bucket",
                 "photon_serve_inter_token_latency_seconds_bucket"):
        assert name in text
    assert server.metric("photon_serve_slots") == SLOTS


BAD = [
    ("bad-json", None, b"{not json", "body"),
    ("wrong-type", {"prompt": "A", "max_tokens": "ten"}, None, "max_tokens"),
    ("unknown-model", {"model": "gpt-5", "prompt": "A"}, None, "model"),
    ("empty-prompt", {"prompt": ""}, None, "prompt"),
    ("prompt-too-long", {"prompt": [5] * CONTEXT}, None, "prompt"),
    ("max-tokens-zero", {"prompt": "A", "max_tokens": 0}, None, "max_tokens"),
    ("negative-temperature", {"prompt": "A", "temperature": -0.5}, None, "temperature"),
    ("n-above-pool", {"prompt": "A", "n": SLOTS + 1}, None, "n"),
    ("token-outside-vocab", {"prompt": [5, 100000]}, None, "prompt"),
    ("prompt-wrong-type", {"prompt": {"text": "A"}}, None, "prompt"),
]


@pytest.mark.parametrize("name,body,raw,field", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_400_naming_the_field(server, name, body, raw, field):
    if body is not None:
        body = {"model": "photon-tiny", **body}
    r = _post(server, body, raw=raw)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == field, r.text
    assert _post(server, {"model": "photon-tiny", "prompt": "A", "max_tokens": 2}).status_code == 200


# Bodies that crashed the engine thread (OverflowError) or slipped through: each is now served with its
# numbers bounded (max_tokens capped to the context left, seeds wrapped to 32 bits) or refused naming
# its field, and a normal request succeeds after it. A prompt of 120 tokens leaves 8 of the 128 to generate.
LONG = [5] * 120
HOSTILE = [
    ("max-tokens-2**31", {"prompt": LONG, "max_tokens": 2**31, "ignore_eos": True}, 8),
    ("max-tokens-10**12", {"prompt": LONG, "max_tokens": 10**12, "ignore_eos": True}, 8),
    ("min-tokens-capped-too", {"prompt": LONG, "max_tokens": 2**70, "min_tokens": 2**70}, 8),
    ("seed-2**70", {"prompt": "A", "max_tokens": 2, "seed": 2**70}, 2),
    ("seed-minus-2**70", {"prompt": "A", "max_tokens": 2, "seed": -(2**70)}, 2),
    ("seed-minus-1", {"prompt": "A", "max_tokens": 2, "seed": -1}, 2),
    ("timeout-1e308", {"prompt": "A", "max_tokens": 2, "timeout": 1e308}, 2),
    ("min-tokens-above-max", {"prompt": "A", "min_tokens": 10**12}, "min_tokens"),
    ("presence-nan", {"prompt": "A", "presence_penalty": float("nan")}, "presence_penalty"),
    ("frequency-inf", {"prompt": "A", "frequency_penalty": float("inf")}, "frequency_penalty"),
    ("repetition-negative-inf", {"prompt": "A", "repetition_penalty": float("-inf")}, "repetition_penalty"),
    ("repetition-huge", {"prompt": "A", "repetition_penalty": 1e300}, "repetition_penalty"),
    ("timeout-inf", {"prompt": "A", "timeout": float("inf")}, "timeout"),
    ("top-k-2**70", {"prompt": "A", "top_k": 2**70}, "top_k"),
    ("n-2**70", {"prompt": "A", "n": 2**70}, "n"),
    ("best-of-2**70", {"prompt": "A", "best_of": 2**70}, "best_of"),
    ("logprobs-2**70", {"prompt": "A", "logprobs": 2**70}, "logprobs"),
    ("prompt-logprobs-2**70", {"prompt": "A", "prompt_logprobs": 2**70}, "prompt_logprobs"),
    ("stop-token-2**70", {"prompt": "A", "stop_token_ids": [2**70]}, "stop_token_ids"),
    ("prompt-token-2**70", {"prompt": [2**70]}, "prompt"),
    ("logit-bias", {"prompt": "A", "logit_bias": {"5": 100}}, "logit_bias"),
    ("suffix", {"prompt": "A", "suffix": "the end"}, "suffix"),
]


@pytest.mark.parametrize("name,body,outcome", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_numbers_are_bounded_or_refused_and_the_server_lives(server, name, body, outcome):
    r = _post(server, {"model": "photon-tiny", **body})
    if isinstance(outcome, str):
        assert r.status_code == 400 and r.json()["error"]["param"] == outcome, r.text
    else:
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == outcome
        assert r.json()["choices"][0]["finish_reason"] == "length"
    assert _post(server, {"model": "photon-tiny", "prompt": "A", "max_tokens": 2}).status_code == 200
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_wrapped_seed_draws_as_its_low_32_bits(server):
    def text(seed):
        body = {"model": "photon-tiny", "prompt": PROMPTS[1], "max_tokens": 8, "temperature": 1.0, "seed": seed}
        return _post(server, body).json()["choices"][0]["text"]
    assert text(2**70 + 11) == text(11) and text(2**32 + 12) == text(12)


def test_vllm_sampling_fields_change_the_text_as_defined(server, client, loaded):
    def complete(**extra):
        return client.completions.create(model="photon-tiny", prompt=PROMPTS[0], max_tokens=24, temperature=0,
                                         **extra).choices[0]
    base = complete().text
    stop = base[5:7]
    kept = complete(stop=[stop], extra_body={"include_stop_str_in_output": True})
    assert kept.text == base[: base.find(stop) + len(stop)] and kept.finish_reason == "stop"
    assert complete(extra_body={"ignore_eos": True}).text == base  # no EOS within 24 tokens here: unchanged
    assert complete(extra_body={"repetition_penalty": 1.0, "presence_penalty": 0, "frequency_penalty": 0}).text == base
    penalized = complete(extra_body={"repetition_penalty": 2.0, "presence_penalty": 2.0, "frequency_penalty": 2.0})
    assert penalized.text != base
    # min_tokens: a stop token cannot end the sample before it (the device masks EOS alike: test_serve_dialect.py)
    first = int(generate(loaded.cfg.model, loaded.params, [loaded.tokenizer.encode(PROMPTS[0])], max_new_tokens=1,
                         sampling=GREEDY).tokens[0][0][0])
    stopped = client.completions.create(model="photon-tiny", prompt=PROMPTS[0], max_tokens=6, temperature=0,
                                        extra_body={"stop_token_ids": [first]})
    assert stopped.usage.completion_tokens == 1
    held = client.completions.create(model="photon-tiny", prompt=PROMPTS[0], max_tokens=6, temperature=0,
                                     extra_body={"stop_token_ids": [first], "min_tokens": 3})
    assert held.usage.completion_tokens >= 3 and held.choices[0].text.startswith(loaded.tokenizer.decode([first]))


def test_prompt_logprobs_are_the_echo_scores(server, client, loaded):
    tok = loaded.tokenizer
    ids = tok.encode(PROMPTS[1])
    r = _post(server, {"model": "photon-tiny", "prompt": ids, "max_tokens": 1, "temperature": 0, "prompt_logprobs": 2})
    plp = r.json()["choices"][0]["prompt_logprobs"]
    echo = client.completions.create(model="photon-tiny", prompt=ids, max_tokens=1, temperature=0, echo=True,
                                     logprobs=2).choices[0].logprobs
    assert len(plp) == len(ids) and plp[0] is None
    for j in range(1, len(ids)):
        own = plp[j][str(ids[j])]
        assert own["logprob"] == pytest.approx(echo.token_logprobs[j], abs=1e-6)
        assert own["decoded_token"] == tok.decode([ids[j]])
        best = max(plp[j].values(), key=lambda e: e["logprob"])
        assert best["rank"] == 1 and best["logprob"] == pytest.approx(max(echo.top_logprobs[j].values()), abs=1e-6)
        if len(plp[j]) == 2:  # the prompt's token is one of the two likeliest
            assert own["rank"] == 1 + sum(e["logprob"] > own["logprob"] for e in plp[j].values())
        else:  # the two likeliest and the prompt's token
            assert len(plp[j]) == 3 and own["rank"] >= 3


BAD_TOKENIZE = [("/tokenize", {"prompt": 5}, "prompt"), ("/tokenize", {"model": "x", "prompt": "A"}, "model"),
                ("/detokenize", {"tokens": [10**9]}, "tokens"), ("/detokenize", {"tokens": "A"}, "tokens"),
                ("/detokenize", [1], "body")]


def test_tokenize_detokenize_version_and_models(server, loaded):
    tok = loaded.tokenizer
    text = PROMPTS[1]
    t = httpx.post(f"{server.url}/tokenize", json={"model": "photon-tiny", "prompt": text}).json()
    assert t == {"tokens": tok.encode(text), "count": len(tok.encode(text)), "max_model_len": CONTEXT}
    assert httpx.post(f"{server.url}/detokenize", json={"tokens": t["tokens"]}).json() == {"prompt": text}
    assert httpx.get(f"{server.url}/version").json() == {"version": __version__}
    entry = httpx.get(f"{server.url}/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()["data"][0]
    assert entry["id"] == entry["root"] == "photon-tiny" and entry["max_model_len"] == CONTEXT
    for path, body, field in BAD_TOKENIZE:
        r = httpx.post(f"{server.url}{path}", json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == field, (path, body, r.text)
    r = httpx.post(f"{server.url}/tokenize", content=b"{oops")
    assert r.status_code == 400 and r.json()["error"]["param"] == "body"


def test_api_key_is_required(server):
    assert _post(server, {"model": "photon-tiny", "prompt": "A"}, key=None).status_code == 401
    assert _post(server, {"model": "photon-tiny", "prompt": "A"}, key="wrong").status_code == 401
    assert httpx.get(f"{server.url}/v1/models").status_code == 401


def test_request_timeout_cuts_with_abort(server):
    r = _post(server, {"model": "photon-tiny", "prompt": "A", "max_tokens": 100, "timeout": 1e-6})
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "abort"


def test_client_disconnect_frees_its_slot(server):
    before = server.metric("photon_serve_generated_tokens_total")
    body = {"model": "photon-tiny", "prompt": [5], "max_tokens": CONTEXT - 1, "temperature": 0, "stream": True,
            "n": SLOTS}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"},
                      timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                break  # one chunk, then hang up
    deadline = time.monotonic() + 30
    while server.metric("photon_serve_busy_slots") > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.metric("photon_serve_busy_slots") == 0
    assert server.metric("photon_serve_kv_bytes_in_use") == 0
    # cut well before the SLOTS * (CONTEXT - 1) tokens it asked for
    assert server.metric("photon_serve_generated_tokens_total") - before < SLOTS * (CONTEXT - 1)


def test_full_queue_429_then_sigterm_drains_and_exits_0(run_dir, tmp_path):
    s = Server(run_dir, tmp_path / "server2.log", "--max-queue", "1", "--grace", "0")
    try:
        body = {"model": "photon-tiny", "prompt": [5], "max_tokens": CONTEXT - 1, "n": SLOTS}
        codes = []

        def ask():
            codes.append(_post(s, body, key=None).status_code)

        threads = [threading.Thread(target=ask) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert 429 in codes and 200 in codes, codes
        assert set(codes) <= {200, 429}

        # in flight when the signal comes: cut (grace 0) with finish_reason "abort". The signal goes out at
        # the stream's first token, so its samples (up to CONTEXT - 1 tokens each) are still being decoded
        # even on a loaded machine (waiting for /metrics first let sampled EOS end them all, sometimes).
        finish, first_token = [], threading.Event()

        def long_stream():
            with httpx.stream("POST", f"{s.url}/v1/completions", json={**body, "stream": True}, timeout=60) as r:
                for line in r.iter_lines():
                    if line.startswith("data:") and line != "data: [DONE]":
                        first_token.set()
                        choices = json.loads(line[5:])["choices"]
                        finish.extend(c["finish_reason"] for c in choices if c["finish_reason"])

        t = threading.Thread(target=long_stream)
        t.start()
        assert first_token.wait(60), s.log()
        s.proc.send_signal(signal.SIGTERM)
        while httpx.get(f"{s.url}/health").status_code != 503:
            time.sleep(0.01)
        assert _post(s, body, key=None).status_code == 503  # no longer admitting
        t.join(60)
        assert s.proc.wait(60) == 0, s.log()
        assert finish and "abort" in finish, finish
    finally:
        s.stop()


@pytest.mark.parametrize("argv,message", [
    (["--slots", "0"], "--slots must be >= 1"),
    (["--kv-budget-gib", "1e-9"], "holds no slot"),
    (["--mode", "vanilla"], "mode 'vanilla' is for vanilla models"),
    (["--port", "0"], "--port must be in"),
])
def test_serve_cli_refuses_bad_options(run_dir, capsys, argv, message):
    assert main(["serve", "--workdir", str(run_dir), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
