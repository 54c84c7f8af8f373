"""The jitted decode loop: sample, record, stop per row, advance the model; fixed shapes.

Loop state (batch b, token capacity T):
  tokens  (b, T) int32   prompt + generated tokens (pad 0 beyond each row's length)
  length  (b,)           tokens so far; fed (b,): tokens the model state has consumed
  stop    (b,)           min(prompt + max_new_tokens, max_context); budget (b,): prompt + max_new
  active  (b,) bool      finish (b,) int32 code (FINISH_REASONS)
  row_id  (b,)           row identity for the PRNG (sampling.position_keys)
  next_logits (b, V)     logits for the token at position `length`
  forced  (b, T) int32   teacher-forced tokens (-1 = sample) (agreement.py)
  logits_out (b, T, V)   optional record of next_logits at every sampled position
  model   the family's model state (photon_runner.py / vanilla_runner.py)
The step count is a traced bound of a lax.while_loop that also stops when no row is active,
so one compiled program serves every max_new_tokens at a given (batch, capacity).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from photon_jax.generation.sampling import adjust_logits, position_keys, sample_tokens

FINISH_REASONS = ("running", "eos", "length", "context")
RUNNING, EOS, LENGTH, CONTEXT = range(4)


def init_loop(tokens_bt, prompt_len_b, budget_b, stop_b, row_id_b, next_logits_bv, model_state, forced_bt,
              record_logits: bool):
    b, t = tokens_bt.shape
    active = prompt_len_b < stop_b
    finish = jnp.where(active, RUNNING, jnp.where(prompt_len_b >= budget_b, LENGTH, CONTEXT)).astype(jnp.int32)
    loop = {"tokens": tokens_bt, "length": prompt_len_b, "fed": prompt_len_b, "stop": stop_b, "budget": budget_b,
            "active": active, "finish": finish, "row_id": row_id_b,
            "next_logits": next_logits_bv.astype(jnp.float32), "forced": forced_bt, "model": model_state}
    if record_logits:
        loop["logits_out"] = jnp.zeros((b, t, next_logits_bv.shape[-1]), jnp.float32)
    return loop


def run_loop(runner, params, loop, steps, seed, eos_id, kind: str, temperature, top_k, top_p, adjust=None):
    """Up to `steps` decode steps (traced). eos_id (a scalar or one per row) < 0 disables EOS. kind:
    sampling.sampling_kind, or "per_row" with (b,) seed, temperature, top_k and top_p (sampling.sample_tokens).
    adjust: None, or a server's (b,) penalty and min_tokens knobs (sampling.adjust_logits)."""
    b, t = loop["tokens"].shape
    row = jnp.arange(b)

    def cond(carry):
        step, lp = carry
        return (step < steps) & jnp.any(lp["active"])

    def body(carry):
        step, lp = carry
        pos = lp["length"]
        active = lp["active"]
        keys = position_keys(seed, lp["row_id"], pos)
        logits = lp["next_logits"]
        if adjust is not None:
            logits = adjust_logits(logits, lp["tokens"], pos, active, jnp.broadcast_to(eos_id, (b,)), adjust)
        tok = sample_tokens(logits, keys, kind, temperature, top_k, top_p)
        if "forced" in lp:  # a server's pool has none
            forced = lp["forced"][row, jnp.minimum(pos, t - 1)]
            tok = jnp.where(forced >= 0, forced, tok)
        tok = jnp.where(active, tok, 0)
        where = jnp.where(active, pos, t)  # out of range -> dropped
        lp = dict(lp)
        lp["tokens"] = lp["tokens"].at[row, where].set(tok, mode="drop")
        if "logits_out" in lp:
            lp["logits_out"] = lp["logits_out"].at[row, where].set(lp["next_logits"], mode="drop")
        new_len = pos + active.astype(pos.dtype)
        hit_eos = active & (tok == eos_id) & (eos_id >= 0)
        hit_stop = active & ~hit_eos & (new_len >= lp["stop"])
        reason = jnp.where(new_len >= lp["budget"], LENGTH, CONTEXT)
        lp["finish"] = jnp.where(hit_eos, EOS, jnp.where(hit_stop, reason, lp["finish"])).astype(jnp.int32)
        adv = active & ~hit_eos & ~hit_stop
        lp["active"] = adv
        lp["length"] = new_len
        fed = jnp.where(adv, new_len, lp["fed"])
        lp["fed"] = fed
        model, logits = runner.advance(params, lp["model"], lp["tokens"], fed, adv)
        lp["model"] = model
        lp["next_logits"] = jnp.where(adv[:, None], logits.astype(jnp.float32), lp["next_logits"])
        return step + 1, lp

    _, loop = jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), loop))
    return loop
