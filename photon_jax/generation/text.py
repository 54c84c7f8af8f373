"""Text in, text out: a prompt string through a run's tokenizer, generated samples decoded back."""

from __future__ import annotations

import dataclasses

from photon_jax.errors import UserError
from photon_jax.generation.api import generate
from photon_jax.generation.sampling import SamplingConfig

DEFAULT_MAX_NEW_TOKENS = 64


def generate_text(loaded, prompt: str, *, mode: str | None = None, num_samples: int = 1,
                  max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, sampling: SamplingConfig | None = None,
                  seed: int = 0) -> dict:
    """Samples of `prompt` from a loaded run (runs.workdir.LoadedRun), stopping at the tokenizer's EOS.

    Returns {prompt, prompt_tokens, mode, sampling, samples: [{text, tokens, finish}], timings}; the EOS
    token is counted in `tokens` but not decoded into `text`."""
    tok = loaded.tokenizer
    if not prompt:
        raise UserError("prompt is empty: give at least one character of text")
    ids = tok.encode(prompt)
    if not ids:
        raise UserError("prompt encodes to no tokens")
    sampling = sampling or SamplingConfig()
    result = generate(loaded.cfg.model, loaded.params, [ids], mode=mode, max_new_tokens=max_new_tokens,
                      sampling=sampling, eos_id=tok.eos_id, seed=seed, num_samples=num_samples)
    samples = []
    for tokens, reason in zip(result.tokens[0], result.finish_reasons[0]):
        body = [t for t in tokens if t != tok.eos_id]
        samples.append({"text": tok.decode(body), "tokens": len(tokens), "finish": reason})
    return {"prompt": prompt, "prompt_tokens": len(ids), "mode": result.mode,
            "sampling": dataclasses.asdict(sampling), "samples": samples, "timings": result.timings}
