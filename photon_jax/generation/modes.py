"""Generation modes: which caches each mode keeps and where each decoder's content comes from.

One decode machinery (hiergen.py) runs every PHOTON mode; a mode is only a policy:

* ``hiergen`` (PHOTON.md 5.2, exact): every encoder level keeps a global KV cache; each
  finished unit is re-encoded bottom-up (chunker + one encoder step per level it completes).
  Decoder content inputs are what training used (encoder states X under alignments A/B, the
  decoder's own outputs at levels >= 2 under C). Reproduces the training forward.
* ``recgen`` (PHOTON.md 5.3, the paper's fast mode, lossy): after prefill only the top
  encoder keeps a cache; lower encoders never run again. Inside a meta-context every decoder
  at level >= 2 (index d >= 1) is fed its own slot outputs Xhat^(d) as content (the encoder
  states it would need are not available), so sampled tokens reach only the level-1 decoder
  and never the top stream. When a meta-context ends, the level-(L-1) states of its units
  (the true X^(L-1) for units finished inside the prompt, the decoder's own Xhat^(L-1) for
  generated ones) go through the top chunker and advance the top encoder by one step.
  With L = 1 the top chunker's input is the token sequence itself, so recgen == hiergen.
* ``exact-local`` (PHOTON.md 5.5): for block_local_lower models. Exact like hiergen, but every
  lower encoder (levels < L) keeps only a ring of one meta-context's units (it attends only
  inside its meta-context, so older entries are never read); the top level stays global.
* ``vanilla``: the token KV cache of a VanillaLM.

The prefill (prefill.py) is the same teacher-forced computation for every PHOTON mode.
"""

from __future__ import annotations

import math

from photon_jax.analysis import modes_for
from photon_jax.config import ModelConfig
from photon_jax.errors import UserError

ALL_MODES = ("hiergen", "recgen", "exact-local", "vanilla")


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


def encoder_block(cfg: ModelConfig, i: int) -> int:
    """Attention block (in level-(i+1) units) of encoder i: 0 = global (PhotonLM.encoder_block)."""
    lower = i < len(cfg.levels) - 1
    return math.prod(lv.chunk for lv in cfg.levels[i + 1:]) if (cfg.block_local_lower and lower) else 0


def encoder_kinds(cfg: ModelConfig, mode: str) -> tuple[str, ...]:
    """Per encoder i: "global" (cache of every unit so far), "ring" (one meta-context) or "none"."""
    n = len(cfg.levels)
    kinds = []
    for i in range(n):
        top = i == n - 1
        if top or mode == "hiergen":
            kinds.append("global")
        elif mode == "exact-local":
            kinds.append("ring")
        elif mode == "recgen":
            kinds.append("none")
        else:
            raise ValueError(mode)
    return tuple(kinds)


def own_content(cfg: ModelConfig, mode: str) -> tuple[bool, ...]:
    """Per decoder d: True when its content inputs are its own slot outputs instead of X^(d)."""
    kinds = encoder_kinds(cfg, mode)
    return tuple(d >= 1 and (cfg.alignment == "C" or kinds[d - 1] == "none") for d in range(len(cfg.levels)))
