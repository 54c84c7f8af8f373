"""The Python API the CLI calls: generate(...) -> GenerationResult.

    generate(model_cfg, params, prompts, mode=None, max_new_tokens=64, sampling=None, eos_id=None,
             seed=0, num_samples=1, max_context=None, share_prompt=True, return_logits=False)

prompts: list of token-id lists (ragged lengths are fine). Each prompt yields num_samples
samples; with num_samples > 1 and share_prompt the prompt's caches are stored once
(multiquery.py). Sample s of prompt p uses PRNG row p * num_samples + s, so the result is the
same as passing the prompt num_samples times with num_samples=1.

Finish reasons: "eos" (eos_id sampled; the EOS token is included in the tokens), "length"
(max_new_tokens generated), "context" (prompt + generated reached max_context).

Behaviour on bad input (UserError, one line): no prompts, an empty prompt (a model needs at
least one token of context: PHOTON's prediction for position 1 is never trained, and a
vanilla LM has no prediction there at all), token ids outside the vocabulary, a prompt
longer than max_context, max_new_tokens <= 0, num_samples < 1, a mode the model cannot run.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from photon_jax.config import ModelConfig
from photon_jax.errors import UserError
from photon_jax.generation.engine import RunSpec, Session
from photon_jax.generation.loop import FINISH_REASONS
from photon_jax.generation.sampling import SamplingConfig, sampling_kind
from photon_jax.model.convert import unrolled
from photon_jax.model.hierarchy import PHOTON_MODES, Hierarchy, modes_for
from photon_jax.sharding import strip_boxes

ALL_MODES = PHOTON_MODES + ("vanilla",)  # what each PHOTON mode computes: photon_runner.py


def default_mode(cfg: ModelConfig) -> str:
    return "vanilla" if cfg.family == "vanilla" else "hiergen"


def check_mode(cfg: ModelConfig, mode: str | None) -> str:
    """Return the mode to run, or raise a one-line UserError when the model cannot run it."""
    mode = default_mode(cfg) if mode in (None, "", "auto") else mode
    if mode not in ALL_MODES:
        raise UserError(f"unknown generation mode {mode!r} (known: {', '.join(ALL_MODES)})")
    if cfg.family == "vanilla":
        if mode != "vanilla":
            raise UserError(f"mode {mode!r} needs a PHOTON model; a vanilla model generates with mode 'vanilla'")
        return mode
    if mode == "vanilla":
        raise UserError("mode 'vanilla' is for vanilla models; a PHOTON model generates with "
                        f"{', '.join(modes_for(cfg))}")
    if mode == "exact-local":
        if len(cfg.levels) < 2:
            raise UserError("mode 'exact-local' needs at least two levels (with one level it is 'hiergen')")
        if not cfg.block_local_lower:
            raise UserError("mode 'exact-local' needs a model trained with model.block_local_lower=true")
    return mode


@dataclasses.dataclass
class GenerationResult:
    prompts: list[list[int]]
    tokens: list[list[list[int]]]  # [prompt][sample] -> generated ids
    finish_reasons: list[list[str]]  # [prompt][sample]
    mode: str
    timings: dict
    logits: list[list[np.ndarray]] | None = None  # [prompt][sample] -> (generated, V): what each token was drawn from

    @property
    def sequences(self) -> list[list[list[int]]]:
        return [[list(p) + t for t in per] for p, per in zip(self.prompts, self.tokens)]


def _as_params(params):
    if isinstance(params, dict) and set(params) == {"params"}:
        return params["params"]
    return params


def check_prompts(cfg: ModelConfig, prompts, max_context: int | None) -> list[list[int]]:
    if prompts is None or len(prompts) == 0:
        raise UserError("no prompts given")
    out = []
    for i, prompt in enumerate(prompts):
        arr = np.asarray(prompt)
        if arr.size == 0:
            raise UserError(f"prompt {i} is empty: give at least one token")
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise UserError(f"prompt {i} must be a flat list of integer token ids")
        bad = arr[(arr < 0) | (arr >= cfg.vocab_size)]
        if bad.size:
            raise UserError(f"prompt {i} has token id {int(bad[0])} outside the vocabulary [0, {cfg.vocab_size})")
        if max_context is not None and arr.size > max_context:
            raise UserError(f"prompt {i} has {arr.size} tokens, more than the maximum context {max_context}")
        out.append([int(x) for x in arr])
    return out


def plan(cfg: ModelConfig, mode: str | None, prompts, max_new_tokens: int, sampling: SamplingConfig | None,
         eos_id: int | None, num_samples: int, max_context: int | None):
    """Validate everything; return (mode, prompts, sampling)."""
    mode = check_mode(cfg, mode)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens <= 0:
        raise UserError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if num_samples < 1:
        raise UserError(f"num_samples must be >= 1, got {num_samples}")
    if max_context is not None and max_context < 1:
        raise UserError(f"max_context must be >= 1, got {max_context}")
    if eos_id is not None and not 0 <= eos_id < cfg.vocab_size:
        raise UserError(f"eos_id {eos_id} is outside the vocabulary [0, {cfg.vocab_size})")
    sampling = (sampling or SamplingConfig()).validate(cfg.vocab_size)
    return mode, check_prompts(cfg, prompts, max_context), sampling


def start_session(cfg: ModelConfig, params, mode: str, prompts: list[list[int]], max_new_tokens: int,
                  sampling: SamplingConfig, eos_id: int | None, seed: int, num_samples: int = 1,
                  max_context: int | None = None, share_prompt: bool = True, record_logits: bool = False,
                  forced: list[list[int]] | None = None):
    """Validated inputs -> (prefilled Session, prompt length per row). forced[r]: tokens forced at
    the positions after row r's prompt (agreement.py); rows are prompt-major."""
    lens = np.array([len(p) for p in prompts], np.int32)
    max_prompt = int(lens.max())
    limit = max_prompt + max_new_tokens if max_context is None else min(max_prompt + max_new_tokens, max_context)
    if cfg.family == "vanilla":
        prompt_pad = max_prompt
        cap = limit
    else:
        hier = Hierarchy.of(cfg)
        prompt_pad = hier.prompt_pad(max_prompt)
        cap = max(hier.capacity(limit), prompt_pad)
    shared = num_samples > 1 and share_prompt
    groups = len(prompts) if shared else len(prompts) * num_samples
    samples = num_samples if shared else 1
    rows_prompts = prompts if shared else [p for p in prompts for _ in range(num_samples)]
    cfg, decode_params = unrolled(cfg, strip_boxes(_as_params(params)))  # see model/convert.py
    spec = RunSpec(cfg, mode, groups, samples, prompt_pad, cap, max_new_tokens if shared else 0,
                   sampling_kind(sampling), record_logits)

    prompt_bt = np.zeros((groups, prompt_pad), np.int32)
    for r, p in enumerate(rows_prompts):
        prompt_bt[r, : len(p)] = p
    prompt_len = np.array([len(p) for p in rows_prompts], np.int32)
    row_len = np.repeat(lens, num_samples)
    budget = row_len + max_new_tokens
    stop = budget if max_context is None else np.minimum(budget, max_context)
    forced_bt = np.full((spec.rows, cap), -1, np.int32)
    if forced is not None:
        for r, f in enumerate(forced):
            f = list(f)[: cap - row_len[r]]
            forced_bt[r, row_len[r]: row_len[r] + len(f)] = f
    session = Session(spec, decode_params, prompt_bt, prompt_len, budget, stop,
                      np.arange(spec.rows, dtype=np.int32), forced_bt, seed, -1 if eos_id is None else eos_id,
                      sampling)
    return session, row_len


def _host(loop) -> dict:
    keep = ("tokens", "length", "finish", "logits_out")
    out = {k: np.asarray(v) for k, v in loop.items() if k in keep}
    out["model"] = loop["model"]
    return out


def run_rows(cfg: ModelConfig, params, mode: str, prompts: list[list[int]], max_new_tokens: int, *args, **kw):
    """start_session + decode to the end -> (loop state on the host, timings, prompt length per row)."""
    session, row_len = start_session(cfg, params, mode, prompts, max_new_tokens, *args, **kw)
    session.step(max_new_tokens)
    return _host(session.loop), session.timings, row_len


def decode_kernel_sites(model_cfg: ModelConfig, params, prompts, mode: str | None = None, max_new_tokens: int = 8,
                        num_samples: int = 1, share_prompt: bool = True) -> int:
    """How many decode-attention kernel launches the decode program of generate(...) with these inputs
    holds (Session.decode_kernel_sites): 0 = the XLA path, > 0 = the Pallas kernels run."""
    mode, prompts, sampling = plan(model_cfg, mode, prompts, max_new_tokens, None, None, num_samples, None)
    session, _ = start_session(model_cfg, params, mode, prompts, max_new_tokens, sampling, None, 0, num_samples,
                               None, share_prompt)
    return session.decode_kernel_sites()


def _finish_reason(code: int) -> str:
    return FINISH_REASONS[code] if code else "length"


def generate(model_cfg: ModelConfig, params, prompts, mode: str | None = None, max_new_tokens: int = 64,
             sampling: SamplingConfig | None = None, eos_id: int | None = None, seed: int = 0,
             num_samples: int = 1, max_context: int | None = None, share_prompt: bool = True,
             return_logits: bool = False) -> GenerationResult:
    mode, prompts, sampling = plan(model_cfg, mode, prompts, max_new_tokens, sampling, eos_id, num_samples,
                                   max_context)
    out, timings, row_len = run_rows(model_cfg, params, mode, prompts, max_new_tokens, sampling, eos_id, seed,
                                     num_samples, max_context, share_prompt, return_logits)
    tokens, reasons, logits = [], [], []
    for p in range(len(prompts)):
        tp, rp, lp = [], [], []
        for s in range(num_samples):
            r = p * num_samples + s
            start, end = int(row_len[r]), int(out["length"][r])
            tp.append([int(x) for x in out["tokens"][r, start:end]])
            rp.append(_finish_reason(int(out["finish"][r])))
            if return_logits:
                lp.append(out["logits_out"][r, start:end])
        tokens.append(tp)
        reasons.append(rp)
        logits.append(lp)
    generated = int(sum(len(t) for per in tokens for t in per))
    timings = dict(timings, generated_tokens=generated,
                   tokens_per_s=generated / timings["decode_s"] if timings["decode_s"] > 0 else float("nan"))
    return GenerationResult(prompts, tokens, reasons, mode, timings, logits if return_logits else None)


def generate_stream(model_cfg: ModelConfig, params, prompts, mode: str | None = None, max_new_tokens: int = 64,
                    sampling: SamplingConfig | None = None, eos_id: int | None = None, seed: int = 0,
                    num_samples: int = 1, max_context: int | None = None, share_prompt: bool = True,
                    chunk_steps: int = 16):
    """Like generate, but yields every `chunk_steps` decode steps a list [prompt][sample] of the
    tokens generated since the previous yield (same compiled programs; the concatenation of the
    chunks equals generate's tokens). The last yield is followed by nothing; finish reasons are
    not reported here (use generate for them)."""
    if chunk_steps < 1:
        raise UserError(f"chunk_steps must be >= 1, got {chunk_steps}")
    mode, prompts, sampling = plan(model_cfg, mode, prompts, max_new_tokens, sampling, eos_id, num_samples,
                                   max_context)
    session, row_len = start_session(model_cfg, params, mode, prompts, max_new_tokens, sampling, eos_id, seed,
                                     num_samples, max_context, share_prompt)
    seen = row_len.copy()
    done = 0
    while done < max_new_tokens and not session.done:
        steps = min(chunk_steps, max_new_tokens - done)
        session.step(steps)
        done += steps
        tokens, length = np.asarray(session.loop["tokens"]), np.asarray(session.loop["length"])
        rows = [[int(x) for x in tokens[r, seen[r]: length[r]]] for r in range(len(row_len))]
        chunk = [rows[p * num_samples: (p + 1) * num_samples] for p in range(len(prompts))]
        seen = length.copy()
        yield chunk
