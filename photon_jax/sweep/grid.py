"""A sweep grid: named runs (preset or YAML file + overrides), optional cartesian axes, FLOP matching.

Grid file (YAML) or dict:

    description: free text
    overrides: [train.steps=200]          # applied to every run
    measure: {agreement_windows: 8, tpm: {pf: 256/32, de: 32/256, max_batch: 8, repeats: 1},
              budget_steps: [200, 400]}  # also evaluate these checkpoints of every run: a budget curve
    reference: vanilla                    # ratios are taken against this run (default: first vanilla run)
    seeds: [0, 1, 2]                      # every run once per seed: NAME-s0, NAME-s1, ... (model init via
                                          # train.seed, window order via data.order_seed; same data split)
    runs:
      - {name: photon, preset: photon-tiny}
      - name: photon
        preset: photon-tiny
        grid:                             # cartesian product -> photon-alpha0.3-R4, ...
          alpha: {"0.3": [model.rec_alpha=0.3]}
          R: {"4": [model.levels.0.fanout=4, model.levels.1.fanout=4]}
      - {name: vanilla-flops, preset: vanilla-tiny, flop_match: photon}

A grid axis is either `dotted.key: [v1, v2]` (one key, values as overrides) or
`label: {value_label: [overrides...]}` (several keys set together). `flop_match: RUN` sets
train.steps so the run's total training FLOPs equal RUN's (same batch and sequence length
required; with seeds, each seed's run matches the same seed's RUN). Every run's config is resolved and
validated before anything trains.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from pathlib import Path
from typing import Any

import yaml

from photon_jax.config import Config, ConfigError, load_config, read_yaml_mapping
from photon_jax.errors import UserError
from photon_jax.model.accounting import train_flops_per_token
from photon_jax.sweep.frontier_settings import parse_frontier

DEFAULT_TPM = {"pf": "256/32", "de": "32/256", "max_batch": 8, "repeats": 1, "memory_budget_gib": 1.0}
# eval_batches 0 = whole split; budget_steps: checkpoints evaluated along each run (no retraining)
DEFAULT_MEASURE = {"agreement_windows": 8, "eval_batches": 0, "tpm": DEFAULT_TPM, "budget_steps": []}
RUN_KEYS = {"name", "preset", "config", "overrides", "grid", "flop_match"}
GRID_KEYS = {"description", "overrides", "measure", "reference", "runs", "seeds", "frontier"}
NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]*$")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    name: str
    cfg: Config
    source: str  # the preset or file it came from
    overrides: tuple[str, ...]
    flop_match: str | None = None
    group: str = ""  # the run's name without its seed suffix ("" = the name: an unseeded grid)
    seed: int | None = None

    @property
    def base(self) -> str:
        return self.group or self.name


@dataclasses.dataclass(frozen=True)
class Grid:
    description: str
    runs: tuple[RunSpec, ...]
    measure: dict
    reference: str | None  # a run name (unseeded) or a group name (seeded: each seed's run of that group)
    seeds: tuple[int, ...] = ()
    frontier: dict | None = None  # the frontier section (sweep/frontier_settings.py), or None

    def run(self, name: str) -> RunSpec:
        return next(r for r in self.runs if r.name == name)


def load_grid(source: str | Path | dict, extra_overrides: list[str] = (), base_dir: Path | None = None) -> Grid:
    """A grid from a YAML path or a dict; extra_overrides (e.g. a smoke test's tiny step count) go last."""
    if isinstance(source, dict):
        data, base_dir = source, base_dir or Path.cwd()
    else:
        path = Path(source)
        data = read_yaml_mapping(path, "grid")
        base_dir = base_dir or path.parent
    if not isinstance(data, dict):
        raise UserError("a sweep grid must be a mapping with a 'runs' list")
    unknown = set(data) - GRID_KEYS
    if unknown:
        raise UserError(f"unknown grid key(s) {sorted(unknown)} (known: {sorted(GRID_KEYS)})")
    common = _string_list(data.get("overrides", []), "grid overrides")
    runs_data = data.get("runs")
    if not isinstance(runs_data, list) or not runs_data:
        raise UserError("the grid needs a non-empty 'runs' list")

    expanded = [point for i, run in enumerate(runs_data) for point in _expand(run, i)]
    names = [p["name"] for p in expanded]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserError(f"duplicate run name(s) in the grid: {', '.join(duplicates)}")
    seeds = _seeds(data.get("seeds"))
    groups = {p["name"] for p in expanded}
    expanded = [_seeded(p, seed, groups) for p in expanded for seed in seeds] if seeds else expanded

    specs: dict[str, RunSpec] = {}
    for point in expanded:
        overrides = tuple(common) + tuple(point["overrides"]) + tuple(extra_overrides) + (f"name={point['name']}",)
        cfg = _load(point, overrides, base_dir)
        specs[point["name"]] = RunSpec(point["name"], cfg, point["source"], overrides, point.get("flop_match"),
                                       point.get("group", ""), point.get("seed"))
    for name, spec in list(specs.items()):
        if spec.flop_match:
            specs[name] = _flop_matched(spec, specs)
    measure = _measure(data.get("measure"))
    for spec in specs.values():
        _check_budget(spec, measure["budget_steps"])

    reference = data.get("reference")
    known = sorted({s.base for s in specs.values()})
    if reference is not None and reference not in known:
        raise UserError(f"grid reference {reference!r} is not a run of the grid (runs: {', '.join(known)})")
    if reference is None:
        reference = next((s.base for s in specs.values() if s.cfg.model.family == "vanilla"), None)
    frontier = parse_frontier(data.get("frontier"), list(specs.values()))
    return Grid(str(data.get("description", "")), tuple(specs.values()), measure, reference, tuple(seeds), frontier)


def budget_steps_of(spec: RunSpec, budget_steps: list[int]) -> list[int]:
    """The budget steps a run reaches (a FLOP-matched run with fewer steps stops earlier)."""
    return [s for s in budget_steps if s <= spec.cfg.train.steps]


def _check_budget(spec: RunSpec, budget_steps: list[int]) -> None:
    """Every budget step the run reaches must be a checkpoint it saves and keeps until the end."""
    steps = budget_steps_of(spec, budget_steps)
    if not steps:
        return
    t = spec.cfg.train
    off = [s for s in steps if s % t.checkpoint_every and s != t.steps]
    if off:
        raise UserError(f"run {spec.name}: budget step {off[0]} is not a checkpoint (train.checkpoint_every="
                        f"{t.checkpoint_every}); use multiples of it")
    saved_after = len(range(steps[0], t.steps + 1, t.checkpoint_every)) + (1 if t.steps % t.checkpoint_every else 0)
    if t.keep_checkpoints < saved_after:
        raise UserError(f"run {spec.name}: keeping the checkpoint of budget step {steps[0]} needs "
                        f"train.keep_checkpoints >= {saved_after} (it is {t.keep_checkpoints})")


def _seeds(value: Any) -> list[int]:
    if value is None:
        return []
    if (not isinstance(value, list) or not value
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)):
        raise UserError(f"grid seeds must be a non-empty list of integers >= 0, got {value!r}")
    if len(set(value)) != len(value):
        raise UserError(f"grid seeds repeat a seed: {value}")
    return list(value)


def _seeded(point: dict, seed: int, groups: set[str]) -> dict:
    """One seed's copy of a grid point: its own init (train.seed) and window order (data.order_seed)."""
    match = point.get("flop_match")
    return {**point, "name": f"{point['name']}-s{seed}", "group": point["name"], "seed": seed,
            "flop_match": f"{match}-s{seed}" if match in groups else match,
            "overrides": point["overrides"] + [f"train.seed={seed}", f"data.order_seed={seed}"]}


def reference_for(grid: Grid, spec_or_seed) -> str | None:
    """The reference run a run is compared with: the same seed's run of the reference group."""
    if grid.reference is None or not grid.seeds:
        return grid.reference
    seed = spec_or_seed.seed if isinstance(spec_or_seed, RunSpec) else spec_or_seed
    return f"{grid.reference}-s{seed}"


def _string_list(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UserError(f"{what} must be a list of KEY=VALUE strings")
    return list(value)


def _expand(run: Any, index: int) -> list[dict]:
    """One `runs` entry -> its grid points, each {name, source kind, overrides, flop_match}."""
    if not isinstance(run, dict):
        raise UserError(f"runs[{index}] must be a mapping with a name and a preset or config")
    unknown = set(run) - RUN_KEYS
    if unknown:
        raise UserError(f"runs[{index}]: unknown key(s) {sorted(unknown)} (known: {sorted(RUN_KEYS)})")
    name = run.get("name")
    if not isinstance(name, str) or not NAME_OK.match(name):
        raise UserError(f"runs[{index}]: name {name!r} must be letters, digits, '.', '_', '=' or '-'")
    if ("preset" in run) == ("config" in run):
        raise UserError(f"run {name}: give exactly one of preset or config")
    base = {"preset": run.get("preset"), "config": run.get("config"),
            "source": run.get("preset") or run.get("config"), "flop_match": run.get("flop_match"),
            "overrides": _string_list(run.get("overrides", []), f"run {name} overrides")}
    if base["flop_match"] is not None and not isinstance(base["flop_match"], str):
        raise UserError(f"run {name}: flop_match must be the name of another run")
    axes = run.get("grid")
    if axes is None:
        return [{**base, "name": name}]
    if not isinstance(axes, dict) or not axes:
        raise UserError(f"run {name}: grid must be a non-empty mapping of axes")
    choices = [_axis(name, label, values) for label, values in axes.items()]
    points = []
    for combo in itertools.product(*choices):
        suffix = "-".join(f"{label}{value}" for label, value, _ in combo)
        points.append({**base, "name": f"{name}-{suffix}",
                       "overrides": base["overrides"] + [o for _, _, extra in combo for o in extra]})
    return points


def _axis(run: str, label: Any, values: Any) -> list[tuple[str, str, list[str]]]:
    """(label, value label, overrides) for every value of one axis."""
    label = str(label)
    if isinstance(values, list) and values:  # dotted.key: [v1, v2]
        short = label.rsplit(".", 1)[-1]
        return [(short, _value_label(v), [f"{label}={_yaml_scalar(v)}"]) for v in values]
    if isinstance(values, dict) and values:  # label: {value: [overrides]}
        return [(label, str(v), _string_list(o, f"run {run} grid axis {label}[{v}]")) for v, o in values.items()]
    raise UserError(f"run {run}: grid axis {label!r} needs a non-empty list of values or mapping of overrides")


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, (dict, list)):
        raise UserError(f"grid values must be scalars, got {value!r}")
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _value_label(value: Any) -> str:
    text = _yaml_scalar(value)
    if not NAME_OK.match(text):
        raise UserError(f"grid value {value!r} cannot be part of a run name; use the label: {{value: [...]}} form")
    return text


def _load(point: dict, overrides: tuple[str, ...], base_dir: Path) -> Config:
    try:
        if point["preset"] is not None:
            return load_config(preset=str(point["preset"]), overrides=list(overrides))
        path = Path(point["config"])
        return load_config(path=str(path if path.is_absolute() else base_dir / path), overrides=list(overrides))
    except ConfigError as e:
        raise UserError(f"run {point['name']}: {e}") from None


def _flop_matched(spec: RunSpec, specs: dict[str, RunSpec]) -> RunSpec:
    """train.steps such that steps x FLOPs/token equals the matched run's (same tokens per step)."""
    target = specs.get(spec.flop_match)
    if target is None:
        raise UserError(f"run {spec.name}: flop_match {spec.flop_match!r} is not a run of the grid")
    if target.flop_match:
        raise UserError(f"run {spec.name}: flop_match target {target.name} is itself FLOP-matched")
    a, b = spec.cfg, target.cfg
    if (a.train.batch_size, a.data.seq_len) != (b.train.batch_size, b.data.seq_len):
        raise UserError(f"run {spec.name}: flop_match needs the same batch x seq_len as {target.name}")
    mine = train_flops_per_token(a.model, a.data.seq_len)
    theirs = train_flops_per_token(b.model, b.data.seq_len)
    steps = max(1, round(b.train.steps * theirs / mine))
    cfg = dataclasses.replace(a, train=dataclasses.replace(a.train, steps=steps)).validate()
    return dataclasses.replace(spec, cfg=cfg, overrides=spec.overrides + (f"train.steps={steps}",))


def _measure(data: Any) -> dict:
    data = {} if data is None else data
    if not isinstance(data, dict) or set(data) - set(DEFAULT_MEASURE):
        raise UserError(f"grid measure must be a mapping with keys among {sorted(DEFAULT_MEASURE)}")
    budget = data.get("budget_steps", [])
    if (not isinstance(budget, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                                for v in budget) or budget != sorted(set(budget))):
        raise UserError(f"measure.budget_steps must be increasing integers > 0, got {budget!r}")
    counts = {"budget_steps": budget}
    for key in ("agreement_windows", "eval_batches"):
        value = data.get(key, DEFAULT_MEASURE[key])
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise UserError(f"measure.{key} must be an integer >= 0, got {value!r}")
        counts[key] = value
    tpm = data.get("tpm", DEFAULT_TPM)
    if tpm is False or tpm is None:
        return {**counts, "tpm": None}
    if not isinstance(tpm, dict) or set(tpm) - set(DEFAULT_TPM):
        raise UserError(f"measure.tpm must be false or a mapping with keys {sorted(DEFAULT_TPM)}")
    tpm = {**DEFAULT_TPM, **tpm}
    for key in ("max_batch", "repeats"):
        if not isinstance(tpm[key], int) or isinstance(tpm[key], bool) or tpm[key] < 1:
            raise UserError(f"measure.tpm.{key} must be an integer >= 1, got {tpm[key]!r}")
    budget = tpm["memory_budget_gib"]
    if not isinstance(budget, (int, float)) or isinstance(budget, bool) or not budget > 0:
        raise UserError(f"measure.tpm.memory_budget_gib must be a number > 0, got {budget!r}")
    for regime in ("pf", "de"):
        if not isinstance(tpm[regime], str):
            raise UserError(f"measure.tpm.{regime} must be 'PROMPT/GENERATED', e.g. '256/32'")
    return {**counts, "tpm": tpm}
