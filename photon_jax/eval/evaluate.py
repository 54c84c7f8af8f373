"""Evaluate a trained work directory on its held-out split, another prepared dir, a text file,
or a multiple-choice JSONL file, on whatever mesh is asked for."""

from __future__ import annotations

from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from photon_jax.data.loading import mixture, pipeline
from photon_jax.data.manifest import load_manifest
from photon_jax.errors import UserError
from photon_jax.eval.by_position import profile as position_profile
from photon_jax.eval.by_position import unit_periods
from photon_jax.eval.choices import load_choice_file, score_choices
from photon_jax.eval.metrics import evaluate_batches, make_eval_step
from photon_jax.eval.tasks import evaluate_tasks
from photon_jax.eval.windows import held_out_windows, score_windows
from photon_jax.generation.agreement import agreement
from photon_jax.runs.workdir import load_run
from photon_jax.sharding import batch_sharding, check_batch
from photon_jax.tokenizers.tokenizer import check_vocab


def pack_text_batches(token_ids: list[int], seq_len: int, batch_size: int, pad_id: int):
    """One token stream -> consecutive windows, the last padded and masked; batches of `batch_size` rows."""
    n_windows = -(-len(token_ids) // seq_len)
    tokens = np.full((n_windows * seq_len,), pad_id, np.int32)
    tokens[: len(token_ids)] = token_ids
    mask = np.zeros_like(tokens, np.float32)
    mask[: len(token_ids)] = 1.0
    tokens, mask = tokens.reshape(n_windows, seq_len), mask.reshape(n_windows, seq_len)
    for start in range(0, n_windows, batch_size):
        t, m = tokens[start:start + batch_size], mask[start:start + batch_size]
        if len(t) < batch_size:  # pad with fully masked rows to keep one compiled shape
            fill = batch_size - len(t)
            t = np.concatenate([t, np.full((fill, seq_len), pad_id, np.int32)])
            m = np.concatenate([m, np.zeros((fill, seq_len), np.float32)])
        yield {"tokens": t, "mask": m}


def read_text(path: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text") from None
    if not text.strip():
        raise UserError(f"{path} is empty")
    return text


def evaluate_run(workdir, *, step=None, text=None, data=None, split="validation", choices=None,
                 max_batches=None, batch_size=None, mesh_cfg=None, agreement_windows: int = 0,
                 overrides=(), by_position: dict[str, int] | None = None, window_scores: int = 0) -> dict:
    """by_position: slot periods ({} = the model's own unit sizes) for a held-out NLL profile by position
    (eval/by_position.py), from the same pass as the loss; None = no profile. window_scores: score every
    generation mode on the first that many held-out windows (eval/windows.py; the agreement windows when
    agreement_windows is the same count)."""
    run = load_run(workdir, step=step, mesh_cfg=mesh_cfg, overrides=overrides)
    cfg, tok = run.cfg, run.tokenizer
    batch_size = batch_size or cfg.train.batch_size
    seq_len = cfg.data.seq_len
    check_batch(run.mesh, run.rules, batch_size, jax.process_count())
    results = {"run": {"workdir": str(Path(workdir).resolve()), "step": run.step, "model": cfg.name,
                       "mesh": ",".join(f"{k}={v}" for k, v in run.mesh.shape.items())}}
    byte_lengths = tok.byte_lengths()
    in_sharding = batch_sharding(run.mesh, run.rules)
    to_device = lambda b: {k: jax.make_array_from_process_local_data(in_sharding, np.asarray(v))  # noqa: E731
                           for k, v in b.items()}
    with jax.set_mesh(run.mesh), nn.logical_axis_rules(run.rules):
        # every output is a sum over the batch: replicated, so any process can read the per-position sums
        eval_fn = jax.jit(make_eval_step(cfg), out_shardings=NamedSharding(run.mesh, PartitionSpec()))
        sums = _PositionSums(eval_fn) if by_position is not None else None
        eval_fn = sums or eval_fn
        if text is not None:
            ids = tok.encode(read_text(text)) + [tok.eos_id]
            batches = pack_text_batches(ids, seq_len, batch_size, tok.pad_id)
            if max_batches:
                batches = (b for i, b in zip(range(max_batches), batches))
            results["text"] = evaluate_batches(eval_fn, run.params, batches, byte_lengths, to_device)
        elif choices is None or data is not None:
            score = lambda d: _score_dir(d, split, run, eval_fn, batch_size, max_batches, byte_lengths,  # noqa: E731
                                         to_device)
            if data is None and cfg.data.mixture:  # each source, and their mean with the mixture's weights
                sources = mixture.load_sources(cfg.data.mixture)
                for source in sources:
                    results[f"{split}/{source.name}"] = score(source.data_dir)
                results[split] = mixture.weighted_metrics([results[f"{split}/{s.name}"] for s in sources],
                                                          [s.weight for s in sources])
            else:
                results[split] = score(Path(data).expanduser().resolve() if data else run.data_dir)
        if sums is not None and sums.targets_t is not None:
            periods = by_position or unit_periods(cfg.model)
            results["by_position"] = {"model": cfg.name, "family": cfg.model.family,
                                      **position_profile(sums.nll_t, sums.targets_t, periods)}
        if agreement_windows:
            results["agreement"] = held_out_agreement(run, agreement_windows)
        if window_scores:
            same = results.get("agreement") if agreement_windows == window_scores else None  # same windows
            results["window_scores"] = score_windows(cfg.model, run.params,
                                                     held_out_windows(run.data_dir, seq_len, window_scores),
                                                     agreement_result=same)
        if choices is not None:
            rows = load_choice_file(choices)
            results["choices"] = score_choices(cfg.model, run.params, tok, rows, seq_len, batch_size, run.mesh,
                                               in_sharding)
    return results


def _score_dir(data_dir: Path, split: str, run, eval_fn, batch_size: int, max_batches, byte_lengths,
               to_device) -> dict:
    """Loss, perplexity and bits per byte of one prepared dir's split (same tokenizer as the run's)."""
    manifest = load_manifest(data_dir)
    check_vocab(manifest, run.cfg.model.vocab_size, what="the checkpoint's model")
    if manifest["tokenizer"]["sha256"] != run.tokenizer.sha256:
        raise UserError(f"data dir {data_dir} was tokenized with another tokenizer than the checkpoint's")
    batches = pipeline.eval_batches(data_dir, split, run.cfg.data.seq_len, batch_size, max_batches,
                                    jax.process_index(), jax.process_count())
    return evaluate_batches(eval_fn, run.params, batches, byte_lengths, to_device)


class _PositionSums:
    """An eval step that also adds up its per-position NLL sums and target counts (one pass for both)."""

    def __init__(self, eval_fn):
        self.eval_fn, self.nll_t, self.targets_t = eval_fn, None, None

    def __call__(self, params, batch):
        out = self.eval_fn(params, batch)
        nll, count = np.asarray(out["nll_t"], np.float64), np.asarray(out["targets_t"], np.float64)
        self.nll_t = nll if self.nll_t is None else self.nll_t + nll
        self.targets_t = count if self.targets_t is None else self.targets_t + count
        return out


def evaluate_run_tasks(workdir, tasks, *, step=None, mesh_cfg=None, overrides=(), batch_size: int = 8,
                       **options) -> dict | None:
    """lm-evaluation-harness tasks on a trained run, params sharded on the run's (or the given) mesh.
    `options`: eval.tasks.evaluate_tasks's (limit, num_fewshot, include_path, mode, output, ...).
    Returns None on processes other than 0."""
    run = load_run(workdir, step=step, mesh_cfg=mesh_cfg, overrides=overrides)
    with jax.set_mesh(run.mesh), nn.logical_axis_rules(run.rules):
        out = evaluate_tasks(run.cfg.model, run.params, run.tokenizer, tasks, max_len=run.cfg.data.seq_len,
                             batch_size=batch_size, mesh=run.mesh, rules=run.rules, **options)
    if out is not None:
        out["run"] = {"workdir": str(Path(workdir).resolve()), "step": run.step, "model": run.cfg.name,
                      "mesh": ",".join(f"{k}={v}" for k, v in run.mesh.shape.items())}
    return out


def held_out_agreement(run, windows: int) -> dict:
    """recgen / exact-local vs hiergen on the first `windows` full held-out windows (docs/method.md 5.3)."""
    return agreement(run.cfg.model, run.params, held_out_windows(run.data_dir, run.cfg.data.seq_len, windows))
