"""What a sweep records for one trained run: size and cost, held-out quality, RecGen agreement, TPM.

Perplexity and bits per byte are computed on the whole held-out split of the run's prepared data
(eval.evaluate.evaluate_run); agreement compares RecGen with exact HierGen on held-out windows
(PHOTON L >= 2 only); `windows` scores every mode of every run on those same windows and positions
(eval/windows.py: the only quality RecGen has, so it is compared like with like); TPM runs the paper's
PF / DE protocol (bench/tpm.py) at the grid's CPU-sized regimes on random weights of the run's shape
(speed and memory do not depend on weight values).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from photon_jax.bench.models import BenchModel, select_modes
from photon_jax.bench.tpm import resolve_regimes, run_tpm
from photon_jax.eval.evaluate import evaluate_run
from photon_jax.model.accounting import count_params, train_flops_per_token
from photon_jax.reports.output import GIB
from photon_jax.sweep.grid import RunSpec, budget_steps_of

# What measure() records, beyond the grid's settings; part of a result's fingerprint (sweep/runner.py), so
# raising it makes a sweep measure its finished runs again (without training them). 2: `windows`.
VERSION = 2


def family_of(spec: RunSpec) -> str:
    return BenchModel(spec.name, spec.cfg).family


def cost(spec: RunSpec) -> dict:
    cfg = spec.cfg
    tokens = cfg.train.steps * cfg.train.batch_size * cfg.data.seq_len
    per_token = train_flops_per_token(cfg.model, cfg.data.seq_len)
    return {"family": family_of(spec), "params": count_params(cfg.model), "steps": cfg.train.steps,
            "train_tokens": tokens, "train_flops_per_token": per_token, "train_flops": per_token * tokens}


def training_curve(workdir: Path, key: str = "token_loss") -> dict:
    """(step, value of `key`) of the train and validation records in metrics.jsonl; the last record
    of a step wins (a resumed run may log the same step twice)."""
    curves: dict[str, dict[int, float]] = {"train": {}, "validation": {}}
    path = workdir / "metrics.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill mid-write
                continue
            if rec.get("split") in curves and key in rec:
                curves[rec["split"]][int(rec["step"])] = float(rec[key])
    return {split: sorted(points.items()) for split, points in curves.items()}


def quality(spec: RunSpec, workdir: Path, agreement_windows: int, eval_batches: int = 0) -> dict:
    model = spec.cfg.model
    windows = agreement_windows if model.family == "photon" and len(model.levels) > 1 else 0
    results = evaluate_run(workdir, agreement_windows=windows, max_batches=eval_batches or None,
                           window_scores=agreement_windows)
    out = {"validation": results["validation"]}
    if windows:
        out["agreement"] = results["agreement"]
    if agreement_windows:  # every run, every mode: the agreement windows (the same tokens for runs sharing data)
        out["windows"] = results["window_scores"]
    return out


def tpm(spec: RunSpec, settings: dict, log) -> dict:
    bench_model = BenchModel(spec.name, spec.cfg)
    regimes = resolve_regimes("both", pf=settings["pf"], de=settings["de"])
    modes = select_modes([bench_model], None)
    data = run_tpm([bench_model], modes, regimes, int(settings["memory_budget_gib"] * GIB), settings["max_batch"],
                   settings["repeats"], device_slope=False, log=log)
    rows = {}
    for r in data["results"]:
        rows[f"{r['regime']}/{r['mode']}"] = {
            "tpm": r["tpm"]["measured"], "throughput_k_tokens_per_s": r["throughput_k_tokens_per_s"],
            "kv_bytes_per_sample": r["kv_bytes_per_sample"]["measured_total"], "batch": r["batch"]["used"],
            "prompt_len": r["prompt_len"], "gen_len": r["gen_len"]}
    return rows


def budget_curve(spec: RunSpec, workdir: Path, steps: list[int], eval_batches: int = 0) -> list[dict]:
    """Held-out quality of the run's own checkpoints at `steps` (one training run, no retraining), with
    the tokens and training FLOPs spent to reach each."""
    cfg = spec.cfg
    per_token = train_flops_per_token(cfg.model, cfg.data.seq_len)
    points = []
    for step in steps:
        validation = evaluate_run(workdir, step=step, max_batches=eval_batches or None)["validation"]
        tokens = step * cfg.train.batch_size * cfg.data.seq_len
        points.append({"step": step, "tokens": tokens, "flops": tokens * per_token, **validation})
    return points


def measure(spec: RunSpec, workdir: Path, settings: dict, log=print) -> dict:
    start = time.perf_counter()
    out = {"run": spec.name, "source": spec.source, "overrides": list(spec.overrides), **cost(spec)}
    out.update(quality(spec, workdir, settings["agreement_windows"], settings["eval_batches"]))
    budget = [s for s in budget_steps_of(spec, settings.get("budget_steps", [])) if s != spec.cfg.train.steps]
    final = {"step": spec.cfg.train.steps, "tokens": out["train_tokens"], "flops": out["train_flops"],
             **out["validation"]}
    out["budget"] = budget_curve(spec, workdir, budget, settings["eval_batches"]) + [final] if budget else []
    out["tpm"] = tpm(spec, settings["tpm"], log) if settings["tpm"] else None
    out["curve"] = training_curve(workdir)
    out["measure_seconds"] = time.perf_counter() - start
    return out
