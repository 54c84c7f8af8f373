"""An EleutherAI lm-evaluation-harness model backed by a photon-jax model (PHOTON, Block or vanilla).

    from photon_jax.eval.harness import HarnessModel
    lm = HarnessModel(backend)                      # backend: eval.backend.ModelBackend
    lm_eval.simple_evaluate(model=lm, tasks=[...])  # or eval.tasks.evaluate_tasks(...)

lm-eval is the `[eval]` extra; without it this module still imports (the training loop imports it)
and using the class says how to install it.
"""

from __future__ import annotations

from photon_jax.errors import UserError
from photon_jax.eval.backend import ModelBackend

try:
    from lm_eval.api.model import LM as _HarnessBase

    HAVE_LM_EVAL = True
except ImportError:  # the optional [eval] extra
    _HarnessBase, HAVE_LM_EVAL = object, False


def require_lm_eval() -> None:
    if not HAVE_LM_EVAL:
        raise UserError("lm-eval is not installed: pip install 'photon-jax[eval]' (lm-eval 0.4.x)")


class HarnessModel(_HarnessBase):
    """The harness's three request types, answered by a ModelBackend (which batches and shards)."""

    def __init__(self, backend: ModelBackend):
        require_lm_eval()
        super().__init__()
        self.backend = backend

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        results = self.backend.loglikelihood([req.args for req in requests])
        for req, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", req.args, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        results = self.backend.loglikelihood_rolling([req.args[0] for req in requests])
        for req, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, result)
        return results

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        results = self.backend.generate_until([(req.args[0], dict(req.args[1])) for req in requests])
        for req, result in zip(requests, results):
            self.cache_hook.add_partial("generate_until", req.args, result)
        return results

    @property
    def tokenizer_name(self) -> str:
        return self.backend.tok.sha256[:16]
