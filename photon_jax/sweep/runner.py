"""Run a grid: one work directory per run under <workdir>/runs/<name>, resumable at every level.

- A run whose results.json exists with the same config and measurement settings is skipped.
- A finished run whose measurement settings (the grid's `measure`, or measure.VERSION) changed is measured
  again, not trained again.
- A run that was interrupted resumes from its last checkpoint (train() does that), a run whose
  training finished but whose measurement did not is measured without training again.
- Runs with the same corpus and tokenizer settings share one prepared data directory
  (<workdir>/data/<key>), so every run of a comparison sees the same tokens.
- The table (results.csv / .json / .txt and results.png) is rewritten after every run.
A finished run whose config changed is refused: its numbers would silently mix two grids.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

from photon_jax.errors import UserError
from photon_jax.sweep import measure, seeds, table
from photon_jax.sweep.frontier import run_frontier
from photon_jax.sweep.grid import Grid, RunSpec, reference_for
from photon_jax.sweep.plot import sweep_figure
from photon_jax.train.loop import train

# DataConfig fields that do not change what `prepare` writes (and so may differ between runs sharing data).
NOT_PREPARE_KEYS = ("data_dir", "seq_len", "worker_count", "prepare_workers", "prepare_unit_mb",
                    "order_seed")


def shared_data_dir(spec: RunSpec, workdir: Path) -> RunSpec:
    if spec.cfg.data.data_dir:  # the grid chose one
        return spec
    fields = {k: v for k, v in dataclasses.asdict(spec.cfg.data).items() if k not in NOT_PREPARE_KEYS}
    fields["vocab"] = fields["vocab_size"] or spec.cfg.model.vocab_size
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]
    data_dir = workdir / "data" / f"vocab{fields['vocab']}-{key}"
    cfg = dataclasses.replace(spec.cfg, data=dataclasses.replace(spec.cfg.data, data_dir=str(data_dir)))
    return dataclasses.replace(spec, cfg=cfg)


def fingerprint(spec: RunSpec, grid: Grid) -> dict:
    """What a stored result must match to be reused (the data dir's location may move with the sweep)."""
    cfg = spec.cfg.to_dict()
    cfg["data"] = {k: v for k, v in cfg["data"].items() if k != "data_dir"}
    return json.loads(json.dumps({"config": cfg, "measure": {**grid.measure, "version": measure.VERSION}}))


def _difference(a: dict, b: dict, prefix: str = "") -> str:
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            found = _difference(x, y, f"{prefix}{key}.")
            if found:
                return found
        elif x != y:
            return f"{prefix}{key}: {x!r} then, {y!r} now"
    return ""


def _training_finished(run_dir: Path, steps: int) -> bool:
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return summary.get("step") == steps and not summary.get("stopped_by")


def _load_result(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):  # missing, or torn by a kill: measure again
        return None


def run_one(spec: RunSpec, grid: Grid, workdir: Path, log=print, quiet: bool = False) -> tuple[dict, str]:
    """(result record, what happened: 'reused' | 'measured' | 'trained')."""
    spec = shared_data_dir(spec, workdir)
    run_dir = workdir / "runs" / spec.name
    result_path = run_dir / "results.json"
    wanted = fingerprint(spec, grid)
    stored = _load_result(result_path)
    if stored is not None:
        then = stored.get("fingerprint", {})
        if then == wanted:
            return stored, "reused"
        if then.get("config") != wanted["config"]:
            raise UserError(f"run {spec.name} in {run_dir} finished with another setting "
                            f"({_difference(then, wanted)}); delete that directory or use another --workdir")
        # the same run measured otherwise: its checkpoint is measured again below (trained only if missing)
        log(f"[sweep] {spec.name}: measured with other settings ({_difference(then, wanted)}); measuring again")
    run_dir.mkdir(parents=True, exist_ok=True)
    what = "measured"
    train_seconds = None
    if not _training_finished(run_dir, spec.cfg.train.steps):
        log(f"[sweep] {spec.name}: training to step {spec.cfg.train.steps} in {run_dir}")
        start = time.perf_counter()
        summary = train(spec.cfg, run_dir, quiet=quiet)
        train_seconds = time.perf_counter() - start
        table.write_atomic(run_dir / "train_seconds.json", json.dumps({"seconds": train_seconds}))
        if summary["stopped_by"]:
            raise UserError(f"run {spec.name} stopped by {summary['stopped_by']} at step {summary['step']}; "
                            f"rerun the sweep to resume")
        what = "trained"
    log(f"[sweep] {spec.name}: measuring")
    record = measure.measure(spec, run_dir, grid.measure, log=log)
    record["train_seconds"] = train_seconds if train_seconds is not None else _stored_train_seconds(run_dir)
    record["fingerprint"] = wanted
    table.write_atomic(result_path, json.dumps(record, indent=2) + "\n")
    return record, what


def _stored_train_seconds(run_dir: Path):
    try:
        return json.loads((run_dir / "train_seconds.json").read_text())["seconds"]
    except (OSError, json.JSONDecodeError, KeyError):
        return None


def run_sweep(grid: Grid, workdir: str | Path, only: list[str] | None = None, log=print, quiet: bool = False,
              plot: bool = True) -> dict:
    """Train and measure every run (or those named in `only`); returns the table {rows, reference, ...}."""
    workdir = Path(workdir).expanduser().resolve()
    if workdir.exists() and not workdir.is_dir():
        raise UserError(f"sweep workdir {workdir} is a file")
    names = [r.name for r in grid.runs]
    unknown = [n for n in only or [] if n not in names]
    if unknown:
        raise UserError(f"--only: no run named {', '.join(unknown)} in the grid (runs: {', '.join(names)})")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create sweep workdir {workdir}: {e.strerror}") from None
    records = {}
    for spec in grid.runs:
        if only and spec.name not in only:
            stored = _load_result(workdir / "runs" / spec.name / "results.json")
            if stored and stored.get("fingerprint") == fingerprint(shared_data_dir(spec, workdir), grid):
                records[spec.name] = stored
            continue
        record, what = run_one(spec, grid, workdir, log=log, quiet=quiet)
        log(f"[sweep] {spec.name}: {what} (val ppl {record['validation']['perplexity']:.2f})")
        records[spec.name] = record
        _write_table(grid, workdir, records, plot)
    result = _write_table(grid, workdir, records, plot)
    if grid.frontier and records:  # sweep/frontier.py: TPM side by side, quality per budget and mode
        by_name = {r["run"]: r for r in result["records"]}
        result["frontier"] = run_frontier(grid, workdir, by_name, plot=plot, log=log)
    return result


def _write_table(grid: Grid, workdir: Path, records: dict, plot: bool) -> dict:
    specs = [r for r in grid.runs if r.name in records]
    ordered = [records[r.name] for r in specs]
    meta = {"description": grid.description, "reference": grid.reference, "measure": grid.measure,
            "runs": [r.name for r in grid.runs], "finished": len(ordered)}
    if not grid.seeds:
        rows = table.with_ratios([table.flat_row(r) for r in ordered], grid.reference)
        table.write(workdir, rows, meta)
    else:
        flat = [{**table.flat_row(r), "group": s.base, "seed": s.seed} for s, r in zip(specs, ordered)]
        rows = seeds.ratios_by_seed(flat, lambda seed: reference_for(grid, seed))
        meta = {**meta, "seeds": list(grid.seeds), "summary": seeds.aggregate(rows)}
        table.write(workdir, rows, meta, summary=seeds.summary_text(meta["summary"], grid.reference))
    if plot and rows:
        sweep_figure(ordered, rows, str(workdir / "results.png"))
    return {**meta, "rows": rows, "records": ordered}
