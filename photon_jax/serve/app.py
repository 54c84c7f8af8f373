"""The HTTP API (FastAPI): OpenAI-compatible /v1/completions and /v1/models, vLLM's /tokenize, /detokenize
and /version, /health, /metrics.

Handlers only check, tokenize and enqueue; the engine thread decodes and calls each request's sink,
which hands events to the request's asyncio queue (call_soon_threadsafe), so no handler ever
waits on a decode step. Errors are OpenAI-shaped JSON: {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sse_starlette.sse import EventSourceResponse

from photon_jax import __version__
from photon_jax.serve import protocol
from photon_jax.serve.engine import Draining, EngineFailed, QueueFull
from photon_jax.serve.engine import Request as EngineRequest
from photon_jax.serve.scheduler import Tokens
from photon_jax.serve.text import SampleText, TokenIdText

DISCONNECT_POLL_S = 0.25


def error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": status}}, status)


class Served:
    """What the handlers need: the engine, the run's tokenizer and limits, the options."""

    def __init__(self, engine, tokenizer, vocab_size: int, model_name: str, max_context: int, metrics,
                 api_key: str | None = None, request_timeout_s: float | None = None, scorer=None):
        self.engine, self.tok, self.vocab_size = engine, tokenizer, vocab_size
        self.model_name, self.max_context, self.metrics = model_name, max_context, metrics
        self.api_key, self.request_timeout_s = api_key, request_timeout_s
        self.scorer = scorer  # prompt_logprobs.PromptScorer: echo with logprobs


def _check_vocab(served: Served, ids: list[int], field: str) -> None:
    bad = [t for t in ids if not 0 <= t < served.vocab_size]
    if bad:
        raise protocol.BadRequest(field, f"token id {bad[0]} is outside the vocabulary [0, {served.vocab_size})")


def _tokens(served: Served, prompt) -> list[int]:
    if isinstance(prompt, str):
        if isinstance(served.tok, TokenIdText):
            raise protocol.BadRequest("prompt",
                                      "this server has no tokenizer (a preset's random weights): send token ids")
        ids = served.tok.encode(prompt)
        if not ids:
            raise protocol.BadRequest("prompt", "prompt encodes to no tokens")
    else:
        ids = list(prompt)
        _check_vocab(served, ids, "prompt")
    if len(ids) >= served.max_context:
        raise protocol.BadRequest("prompt", f"prompt has {len(ids)} tokens; the server's context is "
                                            f"{served.max_context} (--max-context), which leaves no room to generate")
    return ids


def _room(served: Served, prompt: list[int], max_tokens: int) -> int:
    """max_tokens capped to the context the prompt leaves (vLLM caps so too): huge values cannot overflow."""
    return min(max_tokens, served.max_context - len(prompt))


async def _json_body(request: Request):
    try:
        return json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise protocol.BadRequest("body", f"the body is not valid JSON: {e}") from None


def _check_model(served: Served, model) -> None:
    if model != served.model_name:
        raise protocol.BadRequest("model", f"unknown model {model!r} (this server has {served.model_name!r})")


def _check(served: Served, req: protocol.Completion) -> list[list[int]]:
    _check_model(served, req.model)
    if req.top_k > served.vocab_size:
        raise protocol.BadRequest("top_k", f"top_k must be in [0, {served.vocab_size}], got {req.top_k}")
    for t in req.stop_token_ids:
        if not 0 <= t < served.vocab_size:
            raise protocol.BadRequest("stop_token_ids", f"token id {t} is outside the vocabulary")
    slots = served.engine.spec.slots
    if req.n > slots:
        raise protocol.BadRequest("n", f"n = {req.n} is more than the server's {slots} slots")
    if req.echo and req.logprobs is not None and (req.stream or served.scorer is None):
        raise protocol.BadRequest("stream" if req.stream else "echo",
                                  "echo with logprobs (prompt logprobs) is served without streaming, by a server "
                                  "with a tokenizer")
    if req.prompt_logprobs is not None and served.scorer is None:
        raise protocol.BadRequest("prompt_logprobs", "prompt_logprobs are served by a server with a tokenizer")
    return [_tokens(served, p) for p in req.prompts]


def _logprobs_json(tok, entries: list, first: int | None = None) -> dict:
    """OpenAI's completions logprobs. entries[i] None: the prompt's first token (`first`), which has none."""
    tokens, offsets, offset = [], [], 0
    for e in entries:
        piece = tok.decode([first if e is None else e["token"]])
        tokens.append(piece)
        offsets.append(offset)
        offset += len(piece)
    return {"tokens": tokens, "token_logprobs": [None if e is None else e["logprob"] for e in entries],
            "top_logprobs": [None if e is None else _top(tok, e.get("top", {})) for e in entries],
            "text_offset": offsets}


def _prompt_logprobs_json(tok, entries: list) -> list:
    """vLLM's prompt_logprobs: per prompt token, {token id: {logprob, rank, decoded_token}} for the token
    itself and the most likely alternatives; the first token has none (null)."""
    out = []
    for e in entries:
        if e is None:
            out.append(None)
            continue
        ranked = [(e["token"], e["logprob"], e["rank"])]
        ranked += [(t, v, r) for r, (t, v) in enumerate(sorted(e.get("top", {}).items(), key=lambda kv: -kv[1]), 1)]
        entry = {}
        for t, v, r in ranked:
            entry.setdefault(str(t), {"logprob": v, "rank": r, "decoded_token": tok.decode([t])})
        out.append(entry)
    return out


def _cut_top(entries: list, k: int) -> list:
    """Scored prompt entries with only the k likeliest alternatives (one forward serves echo and prompt_logprobs)."""
    def cut(top: dict) -> dict:
        return dict(sorted(top.items(), key=lambda kv: -kv[1])[:k])
    return [e if e is None else {**e, "top": cut(e.get("top", {}))} for e in entries]


def _top(tok, top: dict) -> dict:
    """Alternatives keyed by their text (OpenAI's format); tokens that decode alike keep the likeliest."""
    out = {}
    for t, v in sorted(top.items(), key=lambda kv: -kv[1]):
        out.setdefault(tok.decode([t]), v)
    return out


class Job:
    """The engine requests of one HTTP request (one per prompt) and the text of every choice."""

    def __init__(self, served: Served, req: protocol.Completion, prompts: list[list[int]]):
        self.served, self.req, self.prompts = served, req, prompts
        self.queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self.choices = [SampleText(served.tok, req.stop, req.include_stop_str_in_output, req.min_tokens)
                        for _ in range(len(prompts) * req.n)]
        self.engine_reqs = []
        timeout = min(t for t in (req.timeout, served.request_timeout_s, float("inf")) if t is not None)
        seed = req.seed if req.seed is not None else int.from_bytes(uuid.uuid4().bytes[:4], "little") >> 1
        for i, ids in enumerate(prompts):
            def sink(events, base=i * req.n):  # one wake-up of the event loop per request per engine round
                loop.call_soon_threadsafe(self.queue.put_nowait, (base, events))
            max_tokens = _room(served, ids, req.max_tokens)
            self.engine_reqs.append(EngineRequest(
                prompt=ids, max_tokens=max_tokens, sink=sink, n=req.n, temperature=req.temperature,
                top_k=req.top_k, top_p=req.top_p, seed=seed, stop_ids=frozenset(req.stop_token_ids),
                logprobs=req.logprobs, timeout_s=None if timeout == float("inf") else timeout,
                ignore_eos=req.ignore_eos, min_tokens=min(req.min_tokens, max_tokens),
                repetition_penalty=req.repetition_penalty, presence_penalty=req.presence_penalty,
                frequency_penalty=req.frequency_penalty))

    def submit(self):
        done = []
        try:
            for r in self.engine_reqs:
                done.append(self.served.engine.submit(r))
        except (QueueFull, Draining, EngineFailed):
            for r in done:
                self.served.engine.cancel(r)
            raise

    def cancel(self):
        for r in self.engine_reqs:
            self.served.engine.cancel(r)

    @property
    def finished(self) -> bool:
        return all(c.finish is not None for c in self.choices)

    def apply(self, base: int, event) -> int:
        """Apply one engine event (scheduler.Tokens / Done) of the prompt whose choices start at `base`;
        returns the choice index it touched."""
        index = base + event.sample
        choice = self.choices[index]
        if choice.finish is not None:
            return index  # already ended by a stop string; the engine's late events change nothing
        if isinstance(event, Tokens):
            if choice.add(event.ids, event.logprobs, event.count):
                req = self.engine_reqs[index // self.req.n]
                self.served.engine.cancel(req, "stop", index % self.req.n)
        else:
            choice.finish = event.reason
        return index

    def usage(self) -> dict:
        prompt = sum(len(p) for p in self.prompts)
        completion = sum(c.counted for c in self.choices)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def prefix(self, index: int) -> str:
        if not self.req.echo:
            return ""
        p = self.req.prompts[index // self.req.n]
        return p if isinstance(p, str) else self.served.tok.decode(p)


def create_app(served: Served) -> FastAPI:
    app = FastAPI(title="photon-jax serve")
    metrics = served.metrics

    def unauthorized(request: Request):
        if served.api_key is None:
            return None
        if request.headers.get("authorization", "") != f"Bearer {served.api_key}":
            return error(401, "missing or wrong API key (Authorization: Bearer KEY)", None, "authentication_error")
        return None

    @app.get("/health")
    async def health():
        if served.engine.error is not None:
            return error(503, f"engine failed: {served.engine.error}", None, "server_error")
        if served.engine.draining:
            return error(503, "shutting down", None, "server_error")
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(request: Request):
        if (bad := unauthorized(request)) is not None:
            return bad
        return {"object": "list", "data": [{"id": served.model_name, "object": "model", "created": 0,
                                            "owned_by": "photon-jax", "root": served.model_name, "parent": None,
                                            "max_model_len": served.max_context}]}

    @app.get("/version")
    async def version():
        return {"version": __version__}

    # vLLM's tokenizer endpoints; like vLLM's they sit outside /v1 and need no API key
    @app.post("/tokenize")
    async def tokenize(request: Request):
        return await _answer(request, lambda body: _tokenize(served, body))

    @app.post("/detokenize")
    async def detokenize(request: Request):
        return await _answer(request, lambda body: _detokenize(served, body))

    @app.post("/v1/completions")
    async def completions(request: Request):
        if (bad := unauthorized(request)) is not None:
            metrics.requests.labels("401").inc()
            return bad
        try:
            req = protocol.parse(await _json_body(request))
            prompts = _check(served, req)
        except protocol.BadRequest as e:
            metrics.requests.labels("400").inc()
            return error(400, str(e), e.field)
        job = Job(served, req, prompts)
        try:
            job.submit()
        except QueueFull as e:
            metrics.requests.labels("429").inc()
            return error(429, str(e), None, "rate_limit_error")
        except (Draining, EngineFailed) as e:
            metrics.requests.labels("503").inc()
            return error(503, str(e), None, "server_error")
        metrics.requests.labels("200").inc()
        ident, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if req.stream:
            # "\n" line ends, as OpenAI and vLLM send: clients that split events on "\n\n" (vllm bench serve)
            # lose events that arrive together when they are "\r\n"-separated (sse-starlette's default)
            return EventSourceResponse(_stream(job, request, ident, created), ping=15, sep="\n")
        return await _whole(job, request, ident, created)

    return app


async def _answer(request: Request, handle):
    """handle(the JSON body) -> the answer; a BadRequest becomes the 400 naming its field."""
    try:
        return handle(await _json_body(request))
    except protocol.BadRequest as e:
        return error(400, str(e), e.field)


def _tokenizer_body(served: Served, body) -> dict:
    """The body of /tokenize or /detokenize: an object whose "model", if given, is ours (optional in vLLM)."""
    if not isinstance(body, dict):
        raise protocol.BadRequest("body", "the request body must be a JSON object")
    if body.get("model") is not None:
        _check_model(served, body["model"])
    return body


def _tokenize(served: Served, body) -> dict:
    """{"model", "prompt": a string} -> its token ids, their count, the context."""
    body = _tokenizer_body(served, body)
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise protocol.BadRequest("prompt", f"prompt must be a string, got {prompt!r}")
    if isinstance(served.tok, TokenIdText):
        raise protocol.BadRequest("prompt", "this server has no tokenizer (a preset's random weights)")
    ids = [int(t) for t in served.tok.encode(prompt)] if prompt else []
    return {"tokens": ids, "count": len(ids), "max_model_len": served.max_context}


def _detokenize(served: Served, body) -> dict:
    """{"model", "tokens": token ids} -> {"prompt": their text}."""
    ids = _tokenizer_body(served, body).get("tokens")
    if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
        raise protocol.BadRequest("tokens", "tokens must be a list of token ids")
    _check_vocab(served, ids, "tokens")
    return {"prompt": served.tok.decode(ids)}


async def _next_events(job: Job, request: Request):
    """The next batch of engine events (base, events), or None when the client has gone (its slots are
    then freed)."""
    while True:
        try:
            return await asyncio.wait_for(job.queue.get(), DISCONNECT_POLL_S)
        except TimeoutError:
            if await request.is_disconnected():
                job.cancel()
                return None


async def _whole(job: Job, request: Request, ident: str, created: int):
    while not job.finished:
        batch = await _next_events(job, request)
        if batch is None:
            return error(499, "client disconnected")
        for event in batch[1]:
            job.apply(batch[0], event)
    if any(c.finish == "error" for c in job.choices):
        return error(503, f"the engine failed: {job.served.engine.error}", None, "server_error")
    req = job.req
    echo_lp = req.echo and req.logprobs is not None
    scored = [None] * len(job.prompts)
    if echo_lp or req.prompt_logprobs is not None:  # off the event loop: a forward of the model
        top = max(req.logprobs or 0, req.prompt_logprobs or 0)
        scored = [await asyncio.to_thread(job.served.scorer, ids, top) for ids in job.prompts]
    choices = []
    for i, c in enumerate(job.choices):
        p = i // req.n
        lp = None
        if req.logprobs is not None:
            prompt_lp = _cut_top(scored[p], req.logprobs) if echo_lp else []
            lp = _logprobs_json(job.served.tok, prompt_lp + c.logprobs, job.prompts[p][0])
        choice = {"index": i, "text": job.prefix(i) + c.release(final=True), "finish_reason": c.finish,
                  "logprobs": lp}
        if req.prompt_logprobs is not None:
            choice["prompt_logprobs"] = _prompt_logprobs_json(job.served.tok, _cut_top(scored[p], req.prompt_logprobs))
        choices.append(choice)
    return {"id": ident, "object": "text_completion", "created": created, "model": job.served.model_name,
            "choices": choices, "usage": job.usage()}


async def _stream(job: Job, request: Request, ident: str, created: int):
    def chunk(choices, usage=None):
        return json.dumps({"id": ident, "object": "text_completion", "created": created,
                           "model": job.served.model_name, "choices": choices, "usage": usage})
    try:
        if job.req.echo:
            yield chunk([{"index": i, "text": job.prefix(i), "finish_reason": None, "logprobs": None}
                         for i in range(len(job.choices))])
        while not job.finished:
            batch = await _next_events(job, request)
            if batch is None:
                return
            for event in batch[1]:
                i = job.apply(batch[0], event)
                c = job.choices[i]
                text = c.release(final=c.finish is not None)
                entries = list(event.logprobs or []) if job.req.logprobs is not None and isinstance(event, Tokens) \
                    else []
                if text or entries or c.finish is not None:  # a stop token has no text but has its logprob
                    lp = _logprobs_json(job.served.tok, entries) if entries else None
                    yield chunk([{"index": i, "text": text, "finish_reason": c.finish, "logprobs": lp}])
        if job.req.include_usage:
            yield chunk([], job.usage())
        yield "[DONE]"
    finally:
        if not job.finished:  # the client went away mid-stream (sse-starlette cancels this generator)
            job.cancel()

