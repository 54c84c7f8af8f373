"""Multi-query generation: N samples of one prompt share its prompt cache (cascade attention).

After a batch-of-prompts prefill, every global KV cache is split into
  shared_k / shared_v  (layers, prompts, S_prompt, kv_heads, head_dim)  stored once per prompt
  shared_len           (layers, prompts)                                valid prompt entries
  k / v                (layers, prompts * N, S_suffix, kv_heads, head_dim) each sample's own suffix
Sample s of prompt p is row p * N + s. A new unit (token) at absolute index u of a row whose
prompt holds `base` entries is written at suffix slot u - base. Attention over
[shared prompt part ; own suffix] is computed as two partials with their log-sum-exp and
merged exactly (model/attention.py, through the kernel package); the shared partial folds
the N samples into the query axis, so each prompt's cache is read once per step for all samples.
Small per-row state (local decoder caches, rings, buffers, xhat) is copied per sample.
Only global caches with global attention are shared (a block-local lower encoder in hiergen
mode sees at most its own meta-context, so it is copied).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def repeat_rows(tree, n: int, axis: int = 0):
    return jax.tree.map(lambda x: jnp.repeat(x, n, axis=axis), tree)


def share_cache(cache, prompt_units: int, base_b, n: int, suffix: int):
    """A prefill cache (layers, G, S, ...) -> shared prompt part + zero suffix for G * n rows."""
    layers, groups = cache["k"].shape[:2]
    shape = (layers, groups * n, suffix) + cache["k"].shape[3:]
    return {
        "k": jnp.zeros(shape, cache["k"].dtype),
        "v": jnp.zeros(shape, cache["v"].dtype),
        "shared_k": cache["k"][:, :, :prompt_units],
        "shared_v": cache["v"][:, :, :prompt_units],
        "shared_len": jnp.broadcast_to(base_b.astype(jnp.int32), (layers, groups)),
    }


def share_photon_state(hier, st, prompt_len_g, prompt_pad: int, max_new: int, n: int):
    """PHOTON prefill state for G prompts -> loop state for G * n samples."""
    enc, base = [], []
    for i, cache in enumerate(st["enc"]):
        per = hier.tok_per[i + 1]  # tokens per unit of this cache
        if cache is not None and hier.kinds[i] == "global" and not hier.block[i]:
            count = prompt_len_g // per
            enc.append(share_cache(cache, prompt_pad // per, count, n, -(-max_new // per)))
            base.append(jnp.repeat(count, n))
        else:
            enc.append(None if cache is None else repeat_rows(cache, n, axis=1))
            base.append(None)
    return {"enc": enc, "enc_base": base, "dec": repeat_rows(st["dec"], n, axis=1),
            "xhat": repeat_rows(st["xhat"], n), "buf": repeat_rows(st["buf"], n)}


def share_vanilla_state(st, prompt_len_g, prompt_pad: int, max_new: int, n: int):
    return {"tokens": share_cache(st["tokens"], prompt_pad, prompt_len_g, n, max_new),
            "base": jnp.repeat(prompt_len_g, n)}
