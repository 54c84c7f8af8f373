"""The slot pool: a fixed batch of N decode rows on the device, and the jitted programs that use it.

The pool is the generation loop's state (generation/loop.py) for N rows of token capacity `cap`,
plus each row's own sampling knobs (KNOBS: seed, temperature, top_k, top_p, the penalties, min_tokens,
ignore_eos). Three programs:

* insert (one per prompt bucket width and admit size): prefill up to `admit_batch` prompts in one batch
  with the family's runner and copy each into the slots that take it (n > 1 samples share a prefill);
  the pool is donated and only those rows change, so requests in flight keep their caches.
* decode (one per width in decode_widths): generation.loop.run_loop over the first `width` rows for up
  to `steps` <= max_steps steps (traced), every row sampling with its own knobs (sampling.sample_tokens
  "per_row"); also returns each row's token count, finish code and the tokens of this call: all the host
  reads, once per call.
* release: marks rows inactive (a cut, a stop string, a disconnect); their state is garbage until
  the next insert overwrites it.

With several processes (serve/lockstep.py) the pool is made on the params' mesh, and what the host reads
(decode's view, and the next-token logits for `logprobs`, then a small program of their own) is replicated.

Bytes per slot are read off the pool's own ShapeDtypeStructs at N = 1 (every leaf: caches, tokens,
next-token logits, knobs), so the slot count at a budget counts everything a row holds.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from photon_jax.config import ModelConfig
from photon_jax.generation.caches import tree_nbytes
from photon_jax.generation.engine import make_runner
from photon_jax.generation.loop import init_loop, run_loop
from photon_jax.model.hierarchy import Hierarchy

KNOBS = {"seed": jnp.int32, "temperature": jnp.float32, "top_k": jnp.int32, "top_p": jnp.float32,
         # vLLM's dialect (sampling.adjust_logits): 4 bytes each per slot; the penalties count tokens from
         # the row's token buffer at each step rather than keep a (slots, vocab) table here
         "repetition_penalty": jnp.float32, "presence_penalty": jnp.float32, "frequency_penalty": jnp.float32,
         "min_tokens": jnp.int32, "ignore_eos": jnp.bool_}
NEUTRAL = {"repetition_penalty": 1.0}  # a knob not given is this, else 0 / False: what today's requests get
ADJUST = ("repetition_penalty", "presence_penalty", "frequency_penalty", "min_tokens", "prompt_len")


@dataclasses.dataclass(frozen=True)
class PoolSpec:
    cfg: ModelConfig  # unrolled (model/convert.py)
    mode: str
    slots: int
    cap: int  # token capacity of every slot

    @property
    def unit(self) -> int:
        """Prompt widths are multiples of this: a meta-context for PHOTON (runner prefill contract)."""
        return 1 if self.cfg.family == "vanilla" else Hierarchy.of(self.cfg).meta_context


def capacity(cfg: ModelConfig, max_context: int) -> int:
    return max_context if cfg.family == "vanilla" else Hierarchy.of(cfg).capacity(max_context)


def buckets(cfg: ModelConfig, max_context: int) -> tuple[int, ...]:
    """Padded prompt widths: doubling from one meta-context (or 16 tokens) up to the slot capacity."""
    cap = capacity(cfg, max_context)
    unit = 1 if cfg.family == "vanilla" else Hierarchy.of(cfg).meta_context
    width = max(unit, 16 if cfg.family == "vanilla" else unit)
    out = []
    while width < cap:
        out.append(width)
        width *= 2
    return tuple(out) + (cap,)


def prompt_width(cfg: ModelConfig, prompt_len: int) -> int:
    """The prefill width a prompt needs: PHOTON's current meta-context must fit (Hierarchy.prompt_pad)."""
    return prompt_len if cfg.family == "vanilla" else Hierarchy.of(cfg).prompt_pad(prompt_len)


def _rows(params, prompt_bt, prompt_len_b, budget_b, stop_b, spec: PoolSpec):
    """Prefill b prompts into the loop state of b rows of capacity cap."""
    b = prompt_bt.shape[0]
    runner = make_runner(spec.cfg, spec.mode)
    state, logits = runner.prefill(params, prompt_bt, prompt_len_b, spec.cap)
    tokens = jnp.zeros((b, spec.cap), jnp.int32).at[:, : prompt_bt.shape[1]].set(prompt_bt)
    loop = init_loop(tokens, prompt_len_b, budget_b, stop_b, jnp.zeros((b,), jnp.int32), logits, state, None, False)
    loop.pop("forced")
    loop["prompt_len"] = prompt_len_b  # where the output starts (presence / frequency penalties, min_tokens)
    loop.update({k: jnp.zeros((b,), t) for k, t in KNOBS.items()})
    return loop


def pool_shapes(params, spec: PoolSpec):
    """ShapeDtypeStructs of the pool of spec.slots rows."""
    one = jax.eval_shape(functools.partial(_rows, spec=spec), params, jax.ShapeDtypeStruct((1, spec.unit), jnp.int32),
                         *(jax.ShapeDtypeStruct((1,), jnp.int32),) * 3)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(_with_batch(x.shape, spec.slots, _batch_axis(x.shape)), x.dtype),
                        one)


def _batch_axis(shape) -> int:
    """Caches are (layers, batch, ...); everything else is batch-first (generation/caches.py)."""
    return 1 if len(shape) == 5 else 0


def _with_batch(shape, n: int, axis: int):
    return tuple(n if i == axis else s for i, s in enumerate(shape))


def bytes_per_slot(params, cfg: ModelConfig, mode: str, max_context: int) -> int:
    return tree_nbytes(pool_shapes(params, PoolSpec(cfg, mode, 1, capacity(cfg, max_context))))


def empty_pool(params, spec: PoolSpec):
    pool = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), pool_shapes(params, spec))
    pool["finish"] = jnp.full((spec.slots,), 2, jnp.int32)  # not running (loop.FINISH_REASONS)
    return pool


def _insert(params, pool, prompt_mt, prompt_len_m, budget_m, stop_m, source_n, row_id_n, knobs_m, spec: PoolSpec):
    """Prefill m prompts in one batch; pool row n becomes a copy of prompt source_n[n] (-1: unchanged), so
    the n > 1 samples of a prompt share its prefill and requests in flight keep their rows."""
    new = _rows(params, prompt_mt, prompt_len_m, budget_m, stop_m, spec)
    new.update({k: v.astype(KNOBS[k]) for k, v in knobs_m.items()})
    take_n = jnp.maximum(source_n, 0)
    keep_n = source_n < 0

    def put(fresh, old):
        axis = _batch_axis(old.shape)
        shape = [1] * old.ndim
        shape[axis] = spec.slots
        return jnp.where(keep_n.reshape(shape), old, jnp.take(fresh, take_n, axis=axis))
    pool = jax.tree.map(put, new, pool)
    pool["row_id"] = jnp.where(keep_n, pool["row_id"], row_id_n)  # sample index: its PRNG row (sampling.position_keys)
    return pool


def decode_widths(slots: int, smallest: int = 8) -> tuple[int, ...]:
    """Row counts the decode program is compiled for: doubling from `smallest`, then the whole pool."""
    out, width = [], smallest
    while width < slots:
        out.append(width)
        width *= 2
    return tuple(out) + (slots,)


def _decode(params, pool, steps, eos_id, spec: PoolSpec, width: int, max_steps: int, host=None):
    """Decode the first `width` rows only (the engine fills the lowest free slots first) for up to `steps`
    <= max_steps steps: a step costs what the busy rows need, not what the whole pool holds, and the host
    reads back once per call. `host`: the sharding of what the host reads."""
    def rows(x):
        return jax.lax.slice_in_dim(x, 0, width, axis=_batch_axis(x.shape))
    part = pool if width == spec.slots else jax.tree.map(rows, pool)
    start = part["length"]
    eos_b = jnp.where(part["ignore_eos"], -1, eos_id)  # ignore_eos: EOS is a token like any other
    part = run_loop(make_runner(spec.cfg, spec.mode), params, part, steps, part["seed"], eos_b, "per_row",
                    part["temperature"], part["top_k"], part["top_p"], {k: part[k] for k in ADJUST})
    # what the host reads back: per decoded row, its token count, finish code and the tokens of this call
    at = jnp.minimum(start[:, None] + jnp.arange(max_steps)[None, :], spec.cap - 1)
    new = jnp.take_along_axis(part["tokens"], at, axis=1)
    view = _for_host({"count": part["length"] - start, "finish": part["finish"], "new": new}, host)
    if width == spec.slots:
        return part, view
    return jax.tree.map(lambda x, p: jax.lax.dynamic_update_slice_in_dim(x, p, 0, axis=_batch_axis(x.shape)), pool,
                        part), view


def _for_host(tree, host):
    """With several processes, what process 0 reads must be whole on every device (replicated)."""
    return tree if host is None else jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, host), tree)


def _next_logits(pool, host, width: int):
    return _for_host(pool["next_logits"][:width], host)


def _release(pool, mask_n):
    return {**pool, "active": pool["active"] & ~mask_n}


class Programs:
    """The compiled pool programs of one PoolSpec; counts what it compiled.

    `host` (several processes: a replicated sharding on the params' mesh) is where the pool is made and
    what the host reads back (decode's view, next-token logits) is put, so that process 0 can read it.
    """

    def __init__(self, spec: PoolSpec, params, host=None, max_steps: int = 8, admit_batch: int = 8):
        self.spec = spec
        self.params = params
        self.host = host
        self.max_steps = max_steps  # decode steps one call may run (its view holds that many tokens per row)
        self.admit_sizes = tuple(sorted({1, admit_batch}))  # prompts per insert call, padded up to one of these
        self._insert = jax.jit(functools.partial(_insert, spec=spec), donate_argnums=(1,))
        self._decode = jax.jit(functools.partial(_decode, spec=spec, host=host, max_steps=max_steps),
                               donate_argnums=(1,), static_argnames=("width",))
        self._release = jax.jit(_release, donate_argnums=(0,))
        self._logits = jax.jit(functools.partial(_next_logits, host=host), static_argnames=("width",))
        self.compiled: set = set()

    def _track(self, name, key):
        self.compiled.add((name, key))

    def insert(self, pool, prompts: list, budgets: list, stops: list, source_n: np.ndarray, row_id_n: np.ndarray,
               knobs: dict, width: int | None = None):
        """Prefill `prompts` (padded to the smallest prompt bucket that holds them all, or `width`; their
        count to an admit size) into the rows that source_n points at them; knobs: name -> one value per
        prompt."""
        need = max(prompt_width(self.spec.cfg, len(p)) for p in prompts)
        width = width or next(w for w in buckets(self.spec.cfg, self.spec.cap) if w >= need)
        m = next(size for size in self.admit_sizes if size >= len(prompts))
        prompt_mt = np.zeros((m, width), np.int32)
        lens, budget_m, stop_m = (np.ones(m, np.int32) for _ in range(3))
        for i, p in enumerate(prompts):
            prompt_mt[i, : len(p)] = p
            lens[i], budget_m[i], stop_m[i] = len(p), budgets[i], stops[i]
        # every knob, always (one pytree: one program); host values, so any process count takes them
        knobs_m = {k: np.resize(np.asarray(knobs.get(k, [NEUTRAL.get(k, 0)] * len(prompts)), t), m)
                   for k, t in KNOBS.items()}
        self._track("insert", (width, m))
        return self._insert(self.params, pool, prompt_mt, lens, budget_m, stop_m, np.asarray(source_n, np.int32),
                            np.asarray(row_id_n, np.int32), knobs_m)

    def warm_up(self, pool, eos_id: int, widths=None):
        """Compile every insert (prompt bucket x admit size) and decode program now; returns the pool."""
        none = np.full(self.spec.slots, -1, np.int32)
        knobs = {"temperature": [1.0]}
        for width in widths or buckets(self.spec.cfg, self.spec.cap):
            for m in self.admit_sizes:
                pool = self.insert(pool, [[0]] * m, [1] * m, [1] * m, none, np.zeros(self.spec.slots, np.int32),
                                   {k: v * m for k, v in knobs.items()}, width=min(width, self.spec.cap))
        for width in decode_widths(self.spec.slots):
            pool, _ = self.decode(pool, 0, eos_id, width)
        return self.release(pool, np.zeros(self.spec.slots, bool))

    def slot_bytes(self) -> int:
        """Bytes one slot holds (every leaf of the pool at N = 1)."""
        return tree_nbytes(pool_shapes(self.params, dataclasses.replace(self.spec, slots=1)))

    def decode(self, pool, steps: int, eos_id: int, width: int | None = None):
        """(pool, view): per row of the first `width`: count (tokens this call), finish, new (max_steps)."""
        width = width or self.spec.slots
        self._track("decode", width)
        return self._decode(self.params, pool, np.int32(steps), np.int32(eos_id), width=width)

    def release(self, pool, mask_n: np.ndarray):
        self._track("release", None)
        return self._release(pool, np.asarray(mask_n, bool))

    def empty_pool(self):
        if self.host is None:
            return empty_pool(self.params, self.spec)
        return jax.jit(lambda: empty_pool(self.params, self.spec), out_shardings=self.host)()

    def next_logits(self, pool, width: int) -> np.ndarray:
        """The next-token logits of the first `width` rows, on the host."""
        if self.host is None:
            return np.array(pool["next_logits"])[:width]  # one process: the device array is readable as is
        return np.asarray(self._logits(pool, width=width))
