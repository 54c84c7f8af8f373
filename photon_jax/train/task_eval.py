"""lm-evaluation-harness tasks during training (train.eval_tasks, every train.eval_tasks_every steps).

Task names are checked before the first step, so a typo costs seconds, not a training run. Every
process runs the evaluation (process 0 drives the harness, photon_jax/lockstep.py); the scores come back as
metrics "<task>/<metric>" under the split "tasks" in metrics.jsonl and TensorBoard.
"""

from __future__ import annotations

import jax

from photon_jax.config import Config
from photon_jax.eval.harness import require_lm_eval
from photon_jax.eval.tasks import evaluate_tasks, parse_tasks, task_manager_for
from photon_jax.tokenizers.tokenizer import Tokenizer


class TaskEvaluator:
    def __init__(self, cfg: Config, tokenizer: Tokenizer, mesh, rules):
        t = cfg.train
        self.cfg, self.tokenizer, self.mesh, self.rules = cfg, tokenizer, mesh, rules
        self.tasks = parse_tasks(list(t.eval_tasks)) if t.eval_tasks else []
        self.every, self.include = t.eval_tasks_every, list(t.eval_tasks_include)
        self.limit = None if not t.eval_tasks_limit else (int(t.eval_tasks_limit) if t.eval_tasks_limit >= 1
                                                           else t.eval_tasks_limit)
        if self.tasks:
            require_lm_eval()
            task_manager_for(self.tasks, self.include)

    def due(self, step: int, end: int) -> bool:
        return bool(self.tasks) and (step == end or (self.every > 0 and step % self.every == 0))

    def run(self, params) -> dict[str, float]:
        """{"<task>/<metric>": value} on process 0, {} on the others."""
        out = evaluate_tasks(self.cfg.model, params, self.tokenizer, self.tasks, max_len=self.cfg.data.seq_len,
                             batch_size=self.cfg.train.batch_size, limit=self.limit, include_path=self.include,
                             mesh=self.mesh, rules=self.rules, seed=self.cfg.train.seed)
        if out is None or jax.process_index() != 0:
            return {}
        return {f"{row['task']}/{row['metric']}": row["value"] for row in out["summary"]}
