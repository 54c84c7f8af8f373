"""The OpenAI completions request: parse and check a JSON body; every refusal names its field.

Fields (OpenAI's, plus vLLM's sampling extensions): model, prompt (a string, a list of strings, a list
of token ids, or a list of such lists), max_tokens (default 16; the server caps it to the context left
after the prompt, as vLLM does), temperature (default 1), top_p, top_k, n, best_of (only = n), stop
(a string or up to 4), stop_token_ids, seed, stream, stream_options.include_usage, logprobs (0-5),
echo, user (accepted, unused), timeout (seconds; the server's --request-timeout caps it), and vLLM's
ignore_eos, min_tokens, repetition_penalty, presence_penalty, frequency_penalty,
include_stop_str_in_output, prompt_logprobs (0-5).

Every number is bounded here, so nothing the engine thread converts can overflow: seeds are wrapped
into the sampler key's 32 bits (SEED_BITS), penalties are held to vLLM's ranges. The sampling fields
in REFUSED are a 400 naming them unless given their neutral value; other unknown fields are ignored,
as OpenAI does. (Hand-written rather than pydantic models: the checks here are mostly ranges and
cross-field rules, which pydantic would need validators for anyway, and each refusal stays one line.)
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
    ignore_eos: bool = False
    min_tokens: int = 0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    include_stop_str_in_output: bool = False
    prompt_logprobs: int | None = None


SEED_BITS = 32  # jax.random.key takes 32 bits of seed: a seed is wrapped to them (two's complement)
TOP_LOGPROBS = 5  # the most alternatives logprobs and prompt_logprobs give (prompt_logprobs.TOP)
PENALTY_RANGE = (-2.0, 2.0)  # presence and frequency (OpenAI's and vLLM's range)
REPETITION_RANGE = (1e-3, 1e3)  # vLLM takes any value > 0; beyond these, float32 logits could overflow

# Sampling fields of OpenAI's or vLLM's API that this server does not implement, each with the values
# that mean "off". Any other value is a 400 naming the field: no request is served as if it had not
# asked for something. best_of is checked apart (it is honoured when it equals n).
REFUSED = {
    "suffix": (None, ""),  # insertion needs a model trained for it
    "logit_bias": (None, {}),  # would need a per-slot bias table on the device (OpenAI allows 300 entries)
    "min_p": (None, 0),
    "use_beam_search": (None, False),
    "length_penalty": (None, 1),  # beam search's
    "allowed_token_ids": (None,),
    "bad_words": (None, []),
    "logprob_token_ids": (None,),
    "truncate_prompt_tokens": (None,),
    "prompt_embeds": (None,),
    "response_format": (None,),
    "structured_outputs": (None,),
    "guided_json": (None,),
    "guided_regex": (None,),
    "guided_choice": (None,),
    "guided_grammar": (None,),
    "logits_processors": (None,),
    "watermarking": (None, False),
    "repetition_detection": (None,),
}


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
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(_as_float(v)):
        raise BadRequest(field, f"{field} must be a finite number, got {v!r}")
    return float(v)


def _as_float(v) -> float:
    try:
        return float(v)
    except OverflowError:  # an integer beyond float's range (JSON allows 10**400)
        return math.inf


def _ranged(body, field, default, low, high):
    v = _float(body, field, default)
    if not low <= v <= high:
        raise BadRequest(field, f"{field} must be in [{low:g}, {high:g}], got {v:g}")
    return v


def _seed(body):
    """None (a fresh seed) for no seed or -1 (vLLM's "random"); any other integer, wrapped to SEED_BITS:
    seeds that fit keep their tokens, and 2**70 cannot overflow the engine thread's conversion."""
    seed = _int(body, "seed", None)
    if seed is None or seed == -1:
        return None
    half = 1 << (SEED_BITS - 1)
    return (seed + half) % (2 * half) - half


def _refuse_unimplemented(body):
    for field, neutral in REFUSED.items():
        if field in body and body[field] not in neutral:
            raise BadRequest(field, f"{field} is not supported by this server (see docs/serving.md)")
    best_of = body.get("best_of")
    if best_of is not None and best_of != (body.get("n") or 1):
        raise BadRequest("best_of", f"best_of must equal n (sampling best_of and keeping the best is not "
                                    f"supported), got {best_of!r}")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise BadRequest("user", f"user must be a string, got {user!r}")


def _top(body, field):
    v = body.get(field)
    if v is not None:
        v = _int(body, field, None, 0)
        if v > TOP_LOGPROBS:
            raise BadRequest(field, f"{field} must be in [0, {TOP_LOGPROBS}], got {v}")
    return v


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
    _refuse_unimplemented(body)
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
    req = Completion(model=model, prompts=_prompts(body), max_tokens=_int(body, "max_tokens", 16, 1),
                     temperature=_float(body, "temperature", 1.0), top_p=_float(body, "top_p", 1.0),
                     top_k=_int(body, "top_k", 0, 0), n=_int(body, "n", 1, 1), stop=stop, stop_token_ids=stop_ids,
                     seed=_seed(body), stream=_bool(body, "stream"),
                     include_usage=bool(options.get("include_usage", False)), logprobs=_top(body, "logprobs"),
                     echo=_bool(body, "echo"), timeout=_float(body, "timeout", None),
                     ignore_eos=_bool(body, "ignore_eos"), min_tokens=_int(body, "min_tokens", 0, 0),
                     repetition_penalty=_ranged(body, "repetition_penalty", 1.0, *REPETITION_RANGE),
                     presence_penalty=_ranged(body, "presence_penalty", 0.0, *PENALTY_RANGE),
                     frequency_penalty=_ranged(body, "frequency_penalty", 0.0, *PENALTY_RANGE),
                     include_stop_str_in_output=_bool(body, "include_stop_str_in_output"),
                     prompt_logprobs=_top(body, "prompt_logprobs"))
    if req.temperature < 0:
        raise BadRequest("temperature", f"temperature must be >= 0, got {req.temperature}")
    if req.timeout is not None and req.timeout <= 0:
        raise BadRequest("timeout", f"timeout must be > 0 seconds, got {req.timeout}")
    if not 0.0 < req.top_p <= 1.0:
        raise BadRequest("top_p", f"top_p must be in (0, 1], got {req.top_p}")
    if req.min_tokens > req.max_tokens:
        raise BadRequest("min_tokens", f"min_tokens must be <= max_tokens ({req.max_tokens}), got {req.min_tokens}")
    if req.prompt_logprobs is not None and req.stream:  # vLLM's rule: they come with the whole response
        raise BadRequest("prompt_logprobs", "prompt_logprobs are not available with stream")
    return req
