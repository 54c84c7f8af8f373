"""A grid's `frontier:` section (sweep/frontier.py): its defaults and checks, the architectures of the grid
(a run's preset or config file) and the budget each run belongs to (the run it is FLOP-matched to)."""

from __future__ import annotations

from photon_jax.bench.tpm import parse_regime_value
from photon_jax.errors import UserError

DEFAULT_FRONTIER = {"reference": None, "contexts": [{"pf": "256/32", "de": "32/256"}], "repeats": 5,
                    "max_batch": 8, "memory_budget_gib": 1.0}


def parse_frontier(data, specs: list) -> dict | None:
    """The grid's `frontier` section with defaults, checked; None when the grid has none."""
    if data is None:
        return None
    if not isinstance(data, dict) or set(data) - set(DEFAULT_FRONTIER):
        raise UserError(f"grid frontier must be a mapping with keys among {sorted(DEFAULT_FRONTIER)}")
    out = {**DEFAULT_FRONTIER, **data}
    contexts = out["contexts"]
    if not isinstance(contexts, list) or not contexts:
        raise UserError("frontier.contexts must be a non-empty list of {pf: P/G, de: P/G}")
    for i, context in enumerate(contexts):
        if not isinstance(context, dict) or set(context) != {"pf", "de"}:
            raise UserError(f"frontier.contexts[{i}] must be {{pf: P/G, de: P/G}}, got {context!r}")
        for regime, value in context.items():
            parse_regime_value(str(value), f"frontier.contexts[{i}].{regime}")
    for key in ("repeats", "max_batch"):
        if not isinstance(out[key], int) or isinstance(out[key], bool) or out[key] < 1:
            raise UserError(f"frontier.{key} must be an integer >= 1, got {out[key]!r}")
    budget = out["memory_budget_gib"]
    if not isinstance(budget, (int, float)) or isinstance(budget, bool) or not budget > 0:
        raise UserError(f"frontier.memory_budget_gib must be a number > 0, got {budget!r}")
    sources = {s.source for s in specs}
    if out["reference"] is not None and out["reference"] not in sources:
        raise UserError(f"frontier.reference {out['reference']!r} is not an architecture of the grid "
                        f"(presets or configs: {', '.join(sorted(sources))})")
    if out["reference"] is None and not any(s.cfg.model.family == "vanilla" for s in specs):
        raise UserError("frontier: the grid has no vanilla run; name frontier.reference")
    architectures(specs)  # one model config per architecture, or a clear error
    return out


def architectures(specs: list) -> dict:
    """Architecture (a run's preset or config file) -> its first run (grid.RunSpec, which imports this
    module); all its runs share one model."""
    out: dict = {}
    for spec in specs:
        first = out.setdefault(spec.source, spec)
        if first.cfg.model != spec.cfg.model:
            raise UserError(f"frontier: runs {first.name} and {spec.name} of {spec.source} differ in their model "
                            "config; an architecture must be one model")
    return out


def budget_of(spec) -> str:
    """The run (seedless name) that defines this run's budget: itself, or the run it is FLOP-matched to."""
    if not spec.flop_match:
        return spec.base
    return spec.flop_match.removesuffix(f"-s{spec.seed}") if spec.seed is not None else spec.flop_match
