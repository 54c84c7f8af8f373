"""The static facts of a PHOTON hierarchy, in one place (docs/method.md 2, 3.3, 5).

Everything that follows from a config's levels and alignment without running the model:
chunk lengths C, converter fan-outs R, local decoder windows, tokens per unit at each level,
the meta-context, encoder attention blocks (block-local lower encoders), which stream
conditions which unit under alignments A/B/C, the generation modes a model can run and the
cache each encoder keeps in each mode, and prompt padding / cache capacity. PhotonLM,
generation, accounting and the benchmarks read them from here.

Indices: level l = 1..L is index i = l - 1 for encoders, chunkers, converters and decoders
(encoder i produces X^(l); decoder i rebuilds level-(l-1) states from level-l conditioning).
`tokens_per_unit(l)` takes the level itself: 0 = a token, L = a meta-context.
"""

from __future__ import annotations

import dataclasses
import math

from photon_jax.config import ModelConfig

PHOTON_MODES = ("hiergen", "recgen", "exact-local")


def round_up(x: int, m: int) -> int:
    return -(-x // m) * m


@dataclasses.dataclass(frozen=True)
class Hierarchy:
    chunks: tuple[int, ...]  # C_1 .. C_L
    fanouts: tuple[int, ...]  # R_1 .. R_L
    alignment: str  # "A" | "B" | "C"
    block_local_lower: bool

    @classmethod
    def of(cls, cfg: ModelConfig) -> "Hierarchy":
        return cls(tuple(lv.chunk for lv in cfg.levels), tuple(lv.fanout for lv in cfg.levels), cfg.alignment,
                   cfg.block_local_lower)

    @property
    def num_levels(self) -> int:
        return len(self.chunks)

    @property
    def windows(self) -> tuple[int, ...]:
        """Local decoder window of each level: R converter rows + C - 1 content rows."""
        return tuple(r + c - 1 for r, c in zip(self.fanouts, self.chunks))

    def tokens_per_unit(self, level: int) -> int:
        """Tokens covered by one level-`level` unit (0: a token, L: a meta-context)."""
        return math.prod(self.chunks[:level])

    @property
    def meta_context(self) -> int:
        """B = C_1 * ... * C_L."""
        return self.tokens_per_unit(self.num_levels)

    def units_per_meta_context(self, i: int) -> int:
        """Level-(i+1) units inside one meta-context (C_{i+2} * ... * C_L)."""
        return math.prod(self.chunks[i + 1:])

    def encoder_block(self, i: int) -> int:
        """Attention block (in level-(i+1) units) of encoder i: 0 = global; lower encoders of a
        block_local_lower model attend only inside their meta-context (docs/method.md 5.5)."""
        lower = i < self.num_levels - 1
        return self.units_per_meta_context(i) if (self.block_local_lower and lower) else 0

    # ------------------------------------------------------------------ alignment (docs/method.md 3.3)

    def shifted(self, i: int) -> bool:
        """Whether decoder i is conditioned on the *previous* unit one level up (the top level always;
        lower levels under B and C). Under A a lower decoder reads the slot output of the same unit."""
        return i == self.num_levels - 1 or self.alignment in ("B", "C")

    def self_fed(self, i: int) -> bool:
        """Whether decoder i's content inputs are its own slot outputs in training (variant C, levels >= 2)."""
        return self.alignment == "C" and i > 0

    # ------------------------------------------------------------------ generation modes (docs/method.md 5)

    def modes(self) -> list[str]:
        """The generation modes this model can run (exact-local needs block-local lower encoders)."""
        out = ["hiergen", "recgen"]
        if self.block_local_lower and self.num_levels > 1:
            out.append("exact-local")
        return out

    def encoder_kinds(self, mode: str) -> tuple[str, ...]:
        """Per encoder i: "global" (every unit so far), "ring" (one meta-context of units, exact-local's
        lower levels) or "none" (recgen's lower levels never run after prefill)."""
        if mode not in PHOTON_MODES:
            raise ValueError(f"unknown PHOTON generation mode {mode!r}")
        kinds = []
        for i in range(self.num_levels):
            if i == self.num_levels - 1 or mode == "hiergen":
                kinds.append("global")
            else:
                kinds.append("ring" if mode == "exact-local" else "none")
        return tuple(kinds)

    def own_content(self, mode: str) -> tuple[bool, ...]:
        """Per decoder i: True when its content inputs are its own slot outputs instead of X^(i)
        (variant C, or recgen, whose lower encoder states are not available while decoding)."""
        kinds = self.encoder_kinds(mode)
        return tuple(i >= 1 and (self.alignment == "C" or kinds[i - 1] == "none") for i in range(self.num_levels))

    def cached_units(self, i: int, mode: str, context: int) -> int:
        """Entries encoder i's cache holds for a context of `context` tokens in `mode`."""
        kind = self.encoder_kinds(mode)[i]
        if kind == "global":
            return math.ceil(context / self.tokens_per_unit(i + 1))
        return self.encoder_block(i) if kind == "ring" else 0

    # ------------------------------------------------------------------ prompts and capacity (docs/method.md 5.4)

    def prompt_pad(self, max_prompt: int) -> int:
        """Padded prompt length for prefill: every row's current (unfinished) meta-context fits inside."""
        return (max_prompt // self.meta_context + 1) * self.meta_context

    def capacity(self, max_len: int) -> int:
        """Token capacity of the caches: max_len rounded up to a whole meta-context."""
        return round_up(max_len, self.meta_context)


def feed_own_outputs(slot_outputs, content_bkd, chunk: int):
    """Variant C's self-feeding loop for one decoder (C - 1 passes): the output of slot j becomes the
    content row of slot j + 1. slot_outputs(content (..., C-1, D)) -> slot outputs (..., C, D);
    content_bkd holds zeros on entry. Returns the final content rows."""
    for j in range(chunk - 1):
        content_bkd = content_bkd.at[..., j, :].set(slot_outputs(content_bkd)[..., j, :])
    return content_bkd


def modes_for(cfg: ModelConfig) -> list[str]:
    """Generation modes of a model: "vanilla" for the vanilla family, else Hierarchy.modes()."""
    return ["vanilla"] if cfg.family == "vanilla" else Hierarchy.of(cfg).modes()
