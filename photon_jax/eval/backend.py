"""What a text-level evaluator asks of a trained model, for every family and on any mesh.

`ModelBackend` turns text requests into the model's work: (context, continuation) log-likelihoods and
greedy flags, whole-document log-likelihoods (rolling windows), and generation until stop strings.
Text goes through the run's own tokenizer, with the document boundary token (EOS) in front, as
training saw every document (scoring.py). The model work of one request batch is a `Lockstep` op, so
in a multi-process run process 0 decides and every process computes (photon_jax/lockstep.py).
"""

from __future__ import annotations

import json

import numpy as np

from photon_jax.config import ModelConfig
from photon_jax.errors import UserError
from photon_jax.eval.scoring import SpanScorer, context_continuation_span, rolling_spans
from photon_jax.generation.api import check_mode, generate_stream
from photon_jax.generation.sampling import GREEDY, SamplingConfig
from photon_jax.lockstep import Lockstep
from photon_jax.tokenizers.tokenizer import Tokenizer

DEFAULT_MAX_GEN_TOKS = 256  # the harness's default for generate_until
GEN_CHUNK_STEPS = 16  # decode steps between checks for stop strings


def cut_at_stops(text: str, until: list[str]) -> tuple[str, bool]:
    """The text before the first stop string, and whether one was found."""
    cut = min((text.find(s) for s in until if s and s in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def sampling_from(gen_kwargs: dict, vocab_size: int) -> SamplingConfig:
    """The harness's generation kwargs -> our sampling config (greedy unless do_sample with temperature > 0)."""
    temperature = float(gen_kwargs.get("temperature", 0.0) or 0.0)
    if not gen_kwargs.get("do_sample", False) or temperature <= 0.0:
        return GREEDY
    return SamplingConfig(temperature=temperature, top_k=int(gen_kwargs.get("top_k", 0) or 0),
                          top_p=float(gen_kwargs.get("top_p", 1.0) or 1.0)).validate(vocab_size)


class ModelBackend:
    def __init__(self, cfg: ModelConfig, params, tokenizer: Tokenizer, max_len: int, batch_size: int,
                 mode: str | None = None, mesh=None, batch_sharding=None, seed: int = 0):
        self.cfg, self.params, self.tok, self.max_len = cfg, params, tokenizer, max_len
        self.mode = check_mode(cfg, mode)
        self.batch_size, self.seed = batch_size, seed
        self.scorer = SpanScorer(cfg, params, max_len, batch_size, tokenizer.pad_id, mesh, batch_sharding)
        self.lockstep = Lockstep({"score": self._score_batch, "generate": self._generate_batch})

    # ---- scoring
    def _score_batch(self, payload: dict):
        loglik_b, greedy_b = self.scorer.run_batch(np.asarray(payload["tokens"], np.int32),
                                                   np.asarray(payload["lengths"], np.int32),
                                                   np.asarray(payload["scored"], np.int32))
        return loglik_b, greedy_b

    def _run_batch_everywhere(self, tokens_bt, lengths_b, scored_b):
        return self.lockstep.call("score", {"tokens": tokens_bt, "lengths": lengths_b, "scored": scored_b})

    def loglikelihood(self, pairs: list[tuple[str, str]]) -> list[tuple[float, bool]]:
        spans = [context_continuation_span(self.tok.encode, self.tok.eos_id, c, x, self.max_len) for c, x in pairs]
        return self.scorer.score(spans, self._run_batch_everywhere)

    def loglikelihood_rolling(self, texts: list[str]) -> list[float]:
        spans, owner = [], []
        for doc, text in enumerate(texts):
            pieces = rolling_spans(self.tok.encode(text), self.tok.eos_id, self.max_len)
            spans += pieces
            owner += [doc] * len(pieces)
        totals = [0.0] * len(texts)
        for doc, (loglik, _) in zip(owner, self.scorer.score(spans, self._run_batch_everywhere)):
            totals[doc] += loglik
        return totals

    # ---- generation
    def _generate_batch(self, payload: dict) -> list[str]:
        until, eos = payload["until"], self.tok.eos_id
        sampling = SamplingConfig(**payload["sampling"])
        rows = [[] for _ in payload["prompts"]]
        done = [False] * len(rows)
        stream = generate_stream(self.cfg, self.params, payload["prompts"], mode=self.mode,
                                 max_new_tokens=payload["max_new_tokens"], sampling=sampling, eos_id=eos,
                                 seed=self.seed, max_context=self.max_len, chunk_steps=GEN_CHUNK_STEPS)
        for chunk in stream:
            for r, (new,) in enumerate(chunk):
                rows[r] += new
                if eos in rows[r] or cut_at_stops(self.tok.decode(rows[r]), until)[1]:
                    done[r] = True
            if all(done):
                break
        texts = []
        for ids in rows:
            ids = ids[: ids.index(eos)] if eos in ids else ids
            texts.append(cut_at_stops(self.tok.decode(ids), until)[0])
        return texts

    def generate_until(self, requests: list[tuple[str, dict]]) -> list[str]:
        """Greedy (or sampled, as the kwargs ask) continuations, cut at the first stop string."""
        out: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, (_, kwargs) in enumerate(requests):
            groups.setdefault(json.dumps(kwargs, sort_keys=True, default=str), []).append(i)
        for key, members in groups.items():
            kwargs = json.loads(key)
            until = kwargs.get("until", [])
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS))
            if max_new < 1:
                raise UserError(f"max_gen_toks must be >= 1, got {max_new}")
            max_new = min(max_new, self.max_len - 1)
            sampling = sampling_from(kwargs, self.cfg.vocab_size)
            for start in range(0, len(members), self.batch_size):
                chunk = members[start:start + self.batch_size]
                prompts = [([self.tok.eos_id] + list(self.tok.encode(requests[i][0])))[-(self.max_len - max_new):]
                           for i in chunk]
                texts = self.lockstep.call("generate", {
                    "prompts": prompts, "max_new_tokens": max_new, "until": until,
                    "sampling": {"temperature": sampling.temperature, "top_k": sampling.top_k,
                                 "top_p": sampling.top_p, "greedy": sampling.greedy}})
                for i, text in zip(chunk, texts):
                    out[i] = text
        return out
