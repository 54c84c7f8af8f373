"""The OpenAI completions request: parse and check a JSON body; every refusal names its field.

Fields (OpenAI's, plus top_k and stop_token_ids as vLLM has them): model, prompt (a string, a list
of strings, a list of token ids, or a list of such lists), max_tokens (default 16), temperature
(default 1), top_p, top_k, n, stop (a string or up to 4), stop_token_ids, seed, stream,
stream_options.include_usage, logprobs (0-5), echo, and timeout (seconds; the server's
--request-timeout caps it). Unknown fields are ignored, as OpenAI does.
"""

from __future__ import annotations

import dataclasses
import math


class BadRequest(Exception):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclasses.dataclass
class Completion:
    model: str
    prompts: list  # each a str or a list[int]
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    n: int = 1
    stop: list[str] = dataclasses.field(default_factory=list)
    stop_token_ids: list[int] = dataclasses.field(default_factory=list)
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False
    logprobs: int | None = None
    echo: bool = False
    timeout: float | None = None


def _int(body, field, default, low=None):
    v = body.get(field, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise BadRequest(field, f"{field} must be an integer, got {v!r}")
    if low is not None and v < low:
        raise BadRequest(field, f"{field} must be >= {low}, got {v}")
    return v


def _float(body, field, default):
    v = body.get(field, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise BadRequest(field, f"{field} must be a number, got {v!r}")
    return float(v)


def _bool(body, field):
    v = body.get(field, False)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise BadRequest(field, f"{field} must be true or false, got {v!r}")
    return v


def _is_ids(x) -> bool:
    return isinstance(x, list) and len(x) > 0 and all(isinstance(t, int) and not isinstance(t, bool) for t in x)


def _prompts(body) -> list:
    if "prompt" not in body:
        raise BadRequest("prompt", "prompt is required")
    p = body["prompt"]
    if isinstance(p, str) or _is_ids(p):
        prompts = [p]
    elif isinstance(p, list) and p and all(isinstance(x, str) or _is_ids(x) for x in p):
        prompts = list(p)
    else:
        raise BadRequest("prompt", "prompt must be a string, a list of strings, a list of token ids, or a list of "
                                   "such lists")
    for x in prompts:
        if isinstance(x, str) and not x:
            raise BadRequest("prompt", "prompt is empty: give at least one character or token")
    return prompts


def parse(body) -> Completion:
    if not isinstance(body, dict):
        raise BadRequest("body", "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str):
        raise BadRequest("model", f"model must be a string, got {model!r}")
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise BadRequest("stop", "stop must be a non-empty string or a list of up to 4 of them")
    stop_ids = body.get("stop_token_ids") or []
    if not isinstance(stop_ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in stop_ids):
        raise BadRequest("stop_token_ids", "stop_token_ids must be a list of token ids")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise BadRequest("stream_options", "stream_options must be an object")
    logprobs = body.get("logprobs")
    if logprobs is not None:
        logprobs = _int(body, "logprobs", None, 0)
        if logprobs > 5:
            raise BadRequest("logprobs", f"logprobs must be in [0, 5], got {logprobs}")
    req = Completion(model=model, prompts=_prompts(body), max_tokens=_int(body, "max_tokens", 16, 1),
                     temperature=_float(body, "temperature", 1.0), top_p=_float(body, "top_p", 1.0),
                     top_k=_int(body, "top_k", 0, 0), n=_int(body, "n", 1, 1), stop=stop, stop_token_ids=stop_ids,
                     seed=_int(body, "seed", None), stream=_bool(body, "stream"),
                     include_usage=bool(options.get("include_usage", False)), logprobs=logprobs,
                     echo=_bool(body, "echo"), timeout=_float(body, "timeout", None))
    if req.temperature < 0:
        raise BadRequest("temperature", f"temperature must be >= 0, got {req.temperature}")
    if req.timeout is not None and req.timeout <= 0:
        raise BadRequest("timeout", f"timeout must be > 0 seconds, got {req.timeout}")
    if not 0.0 < req.top_p <= 1.0:
        raise BadRequest("top_p", f"top_p must be in (0, 1], got {req.top_p}")
    return req
