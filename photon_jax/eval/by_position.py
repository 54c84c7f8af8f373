"""Held-out NLL by where a target sits: in the window, and in each level's unit (docs/method.md 3.3).

A window starts on a meta-context boundary (data.seq_len is a multiple of B = C_1 * ... * C_L), and
its targets are the tokens at positions p = 1 .. T-1 (0-based; the same targets for every family).
A target's slot in a level-l unit is p mod (C_1 * ... * C_l): slot 0 of the level-1 chunk is the
token whose predecessor reaches it only through the hierarchy (PHOTON's decoder for that chunk was
conditioned before it saw any of the chunk's tokens). A vanilla model has no units: folded by the same
periods its profile is flat up to the context effect, which is what a comparison shows.

Sums, not means of means: every profile carries its NLL sums and target counts, so the
token-weighted mean over the slots of any period is exactly the overall held-out NLL.
"""

from __future__ import annotations

import math

import numpy as np

from photon_jax.config import ModelConfig
from photon_jax.errors import UserError


def unit_periods(model: ModelConfig) -> dict[str, int]:
    """{"level1": C_1, "level2": C_1*C_2, ...} for PHOTON / Block; {} for vanilla."""
    if model.family == "vanilla":
        return {}
    out, period = {}, 1
    for index, level in enumerate(model.levels, start=1):
        period *= level.chunk
        out[f"level{index}"] = period
    return out


def parse_periods(text: str | None) -> dict[str, int] | None:
    """--slots "4,16" -> {"every4": 4, "every16": 16}; None when not given."""
    if text is None:
        return None
    out = {}
    for item in text.split(","):
        item = item.strip()
        if not item.isdigit() or int(item) < 1:
            raise UserError(f"--slots {text!r}: expected comma-separated positive integers, e.g. 4,16")
        out[f"every{int(item)}"] = int(item)
    return out


def target_positions(seq_len: int) -> np.ndarray:
    """Window position of each target: targets are tokens[:, 1:]."""
    return np.arange(1, seq_len)


def fold(nll_t: np.ndarray, targets_t: np.ndarray, period: int) -> dict:
    """Per slot s = p mod period: mean NLL, NLL sum and target count."""
    slots = target_positions(len(nll_t) + 1) % period
    sums = np.bincount(slots, weights=nll_t, minlength=period)
    counts = np.bincount(slots, weights=targets_t, minlength=period)
    means = np.divide(sums, counts, out=np.full(period, np.nan), where=counts > 0)
    return {"period": period, "nll": [None if math.isnan(v) else float(v) for v in means],
            "nll_sum": sums.tolist(), "targets": counts.tolist()}


def profile(nll_t: np.ndarray, targets_t: np.ndarray, periods: dict[str, int]) -> dict:
    """The overall NLL, the profile over window positions, and one fold per named period."""
    seq_len = len(nll_t) + 1
    for name, period in periods.items():
        if seq_len % period:
            raise UserError(f"slot period {period} ({name}) does not divide the window length {seq_len}")
    total, count = float(nll_t.sum()), float(targets_t.sum())
    out = {"token_loss": total / count, "targets": count, "seq_len": seq_len,
           "window": fold(nll_t, targets_t, seq_len)}
    out["slots"] = {name: fold(nll_t, targets_t, period) for name, period in periods.items()}
    return out


def first_slot_excess(fold_result: dict) -> float | None:
    """NLL of slot 0 minus the token-weighted mean NLL of the other slots (nats)."""
    sums, counts = np.asarray(fold_result["nll_sum"]), np.asarray(fold_result["targets"])
    if len(sums) < 2 or counts[0] == 0 or counts[1:].sum() == 0:
        return None
    return float(sums[0] / counts[0] - sums[1:].sum() / counts[1:].sum())


def position_plot(profiles: dict[str, dict], path: str) -> None:
    """One panel per slot period (and one for window positions), every run overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({name for p in profiles.values() for name in p["slots"]}, key=lambda n: (len(n), n))
    panels = names + ["window"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for run, p in profiles.items():
            folded = p["window"] if panel == "window" else p["slots"].get(panel)
            if folded is None:
                continue
            xs = list(range(folded["period"]))
            ax.plot(xs, [np.nan if v is None else v for v in folded["nll"]], "o-" if panel != "window" else "-",
                    label=f"{run} ({p['token_loss']:.3f})", markersize=3)
        ax.set_xlabel("position in window" if panel == "window" else f"slot in {panel} unit")
        ax.set_ylabel("held-out NLL (nats)")
        ax.set_title(panel)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
