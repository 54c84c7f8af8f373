"""Zero-/few-shot tasks through lm-evaluation-harness, for a trained run or already-loaded params.

    evaluate_tasks(model_cfg, params, tokenizer, ["hellaswag", "wikitext"], max_len=2048, ...)

Local tasks (a directory of task YAMLs, e.g. `dataset_path: json` with `data_files`) are found
through `include_path` without network; the harness's own task names need the Hugging Face hub
(or its cache). In a multi-process run every process calls this with the same arguments: process 0
runs the harness, the others execute the same model programs (lockstep.py) and get None back.
"""

from __future__ import annotations

import difflib
import functools
import json
import os
from pathlib import Path

import jax

from photon_jax.config import ModelConfig
from photon_jax.errors import UserError
from photon_jax.eval.backend import ModelBackend
from photon_jax.eval.harness import HarnessModel, require_lm_eval
from photon_jax.reports.tables import fmt, table
from photon_jax.sharding import batch_sharding, check_batch
from photon_jax.tokenizers.tokenizer import Tokenizer

BUNDLED_TASKS = Path(__file__).resolve().parent / "local_tasks"  # shakespeare_next_line, shakespeare_ppl
NOT_METRICS = ("sample_len", "alias", "sample_count")


def parse_tasks(text: str | list[str]) -> list[str]:
    names = [t.strip() for t in (text.split(",") if isinstance(text, str) else text)]
    names = [t for t in names if t]
    if not names:
        raise UserError("no task names given (e.g. --tasks hellaswag,sciq,arc_easy,wikitext)")
    return names


def _task_index(paths: tuple[str, ...], include_defaults: bool):
    from lm_eval.tasks import TaskManager

    if include_defaults:
        return _full_task_index(paths)
    return TaskManager(include_path=list(paths), include_defaults=False)  # cheap: read again every time


@functools.lru_cache(maxsize=4)
def _full_task_index(paths: tuple[str, ...]):
    """Indexing the ~15k built-in task configs takes about 13 s: once per process and set of paths."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(paths), include_defaults=True)


def task_manager_for(tasks: list[str], include_path: list[str] | None):
    """The harness's task index: only the include paths when they hold every task asked for (indexing
    the built-in tasks takes seconds), else the built-in tasks too. Unknown names: one line."""
    paths = [str(Path(p).expanduser().resolve()) for p in include_path or []]
    for p in paths:
        if not Path(p).is_dir():
            raise UserError(f"task include path {p} is not a directory")
    paths = (str(BUNDLED_TASKS), *paths)
    local = _task_index(paths, False)
    if all(t in local.all_tasks for t in tasks):
        return local
    manager = _task_index(paths, True)
    for t in tasks:
        if t not in manager.all_tasks:
            near = difflib.get_close_matches(t, manager.all_tasks, 3)
            hint = f" (did you mean {', '.join(near)}?)" if near else ""
            raise UserError(f"unknown lm-eval task {t!r}{hint}")
    return manager


def load_task_data(tasks: list[str], manager) -> None:
    """Load every task's dataset now, so a missing one is one line naming the task, before any model work."""

    for task in tasks:
        try:
            manager.load([task])
        except Exception as e:  # datasets raises many types (hub, offline, file, format); name the task
            detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            offline = " (offline: HF_DATASETS_OFFLINE / HF_HUB_OFFLINE is set)" if _offline() else ""
            raise UserError(f"task {task!r}: cannot load its dataset{offline}: {detail[:300]}") from None


def _offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes") for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))


def summary_rows(results: dict) -> list[dict]:
    """One row per (task, metric) of the harness's results: value and standard error."""
    rows = []
    for task, metrics in results.get("results", {}).items():
        for key, value in metrics.items():
            metric, _, filt = key.partition(",")
            if (metric.endswith("_stderr") or metric in NOT_METRICS or not isinstance(value, (int, float))
                    or isinstance(value, bool)):
                continue
            stderr = metrics.get(f"{metric}_stderr,{filt}")
            rows.append({"task": task, "metric": metric, "filter": filt, "value": float(value),
                         "stderr": float(stderr) if isinstance(stderr, (int, float)) else None})
    return rows


def summary_table(rows: list[dict]) -> str:
    return table(["task", "metric", "value", "stderr"],
                 [[r["task"], r["metric"], fmt(r["value"], ".4f"), fmt(r["stderr"], ".4f")] for r in rows])


def evaluate_tasks(model_cfg: ModelConfig, params, tokenizer: Tokenizer, tasks, *, max_len: int,
                   batch_size: int = 8, limit: int | float | None = None, num_fewshot: int | None = None,
                   include_path: list[str] | None = None, mode: str | None = None, mesh=None, rules=None,
                   output: str | Path | None = None, log_samples: bool = False, seed: int = 0,
                   bootstrap_iters: int = 1000) -> dict | None:
    """Run harness tasks; returns {"harness": the harness's result dict, "summary": rows} on process 0."""
    require_lm_eval()
    tasks = parse_tasks(tasks)
    if batch_size < 1:
        raise UserError(f"batch size must be >= 1, got {batch_size}")
    if num_fewshot is not None and num_fewshot < 0:
        raise UserError(f"--num-fewshot must be >= 0, got {num_fewshot}")
    if limit is not None and limit <= 0:
        raise UserError(f"--limit must be > 0, got {limit}")
    sharding = None
    if mesh is not None:
        check_batch(mesh, rules, batch_size, jax.process_count())
        sharding = batch_sharding(mesh, rules)
    backend = ModelBackend(model_cfg, params, tokenizer, max_len, batch_size, mode, mesh, sharding, seed)
    if jax.process_index() != 0:
        backend.lockstep.serve()
        return None
    error = None
    try:
        manager = task_manager_for(tasks, include_path)
        load_task_data(tasks, manager)
        from lm_eval import simple_evaluate

        results = simple_evaluate(model=HarnessModel(backend), tasks=tasks, task_manager=manager, limit=limit,
                                  num_fewshot=num_fewshot, log_samples=log_samples, bootstrap_iters=bootstrap_iters,
                                  random_seed=seed, numpy_random_seed=seed, fewshot_random_seed=seed)
    except Exception as e:  # the other processes stop too, with the same one line when it is the user's
        error = str(e) if isinstance(e, UserError) else f"process 0 failed: {type(e).__name__}: {e}"
        raise
    finally:
        backend.lockstep.stop(error)
    results["config"] = dict(results.get("config", {}), model="photon-jax", batch_size=batch_size,
                             generation_mode=backend.mode, max_length=max_len)
    results = jsonable(results)
    if output is not None:
        write_results(results, output)
    return {"harness": results, "summary": summary_rows(results), "widths": sorted(backend.scorer.widths_run)}


def jsonable(results: dict) -> dict:
    """The harness's results as plain JSON values (its configs hold numpy values and functions)."""
    from lm_eval.utils import handle_non_serializable

    return json.loads(json.dumps(results, default=handle_non_serializable))


def write_results(results: dict, output: str | Path) -> Path:
    """The harness's JSON, written atomically (a crash never leaves half a file)."""
    path = Path(output).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, ensure_ascii=False))
    os.replace(tmp, path)
    return path
