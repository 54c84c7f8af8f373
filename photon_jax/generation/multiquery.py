"""Multi-query generation: N samples of one prompt share its prompt cache (cascade attention).

After a batch-of-prompts prefill, every global KV cache is split into
  shared_k / shared_v  (layers, prompts, S_prompt, kv_heads, head_dim)  stored once per prompt
  shared_len           (layers, prompts)                                valid prompt entries
  k / v                (layers, prompts * N, S_suffix, kv_heads, head_dim) each sample's own suffix
Sample s of prompt p is row p * N + s. A new unit (token) at absolute index u of a row whose
prompt holds `base` entries is written at suffix slot u - base. Attention over
[shared prompt part ; own suffix] is computed as two partials with their log-sum-exp and
merged exactly (pallas_kernels.reference.merge_partials); the shared partial folds the N
samples into the query axis, so each prompt's cache is read once per step for all samples.
Small per-row state (local decoder caches, rings, buffers, xhat) is copied per sample.
Only global caches with global attention are shared (a block-local lower encoder in hiergen
mode sees at most its own meta-context, so it is copied).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp



def masked_partial(q_bthd, k_bskd, v_bskd, mask_bts):
    """Attention over one cache part with an arbitrary mask: (out (b,t,h,d), lse (b,t,h) fp32)."""
    b, t, h, d = q_bthd.shape
    kvh = k_bskd.shape[2]
    q = q_bthd.astype(jnp.float32).reshape(b, t, kvh, h // kvh, d)
    logits = jnp.einsum("btkgd,bskd->bkgts", q, k_bskd.astype(jnp.float32)) * (d ** -0.5)
    logits = jnp.where(mask_bts[:, None, None], logits, -jnp.inf)
    m = jnp.max(logits, axis=-1, keepdims=True)
    m_safe = jnp.where(jnp.isfinite(m), m, 0.0)
    p = jnp.exp(logits - m_safe)
    total = jnp.sum(p, axis=-1, keepdims=True)
    out = jnp.einsum("bkgts,bskd->bkgtd", p, v_bskd.astype(jnp.float32)) / jnp.where(total > 0, total, 1.0)
    lse = jnp.where(total[..., 0] > 0, m_safe[..., 0] + jnp.log(jnp.where(total[..., 0] > 0, total[..., 0], 1.0)),
                    -jnp.inf)
    out = jnp.transpose(out, (0, 3, 1, 2, 4)).reshape(b, t, h, d)
    lse = jnp.transpose(lse, (0, 3, 1, 2)).reshape(b, t, h)
    return out, lse


def shared_prefix_attention(q_bthd, k_bskd, v_bskd, mask_bts, cache):
    """Attention of each row over its prompt group's shared cache and its own (masked) cache."""
    from pallas_kernels.reference import decode_attention_reference, merge_partials

    b, t, h, d = q_bthd.shape
    groups = cache["shared_k"].shape[0]
    per = b // groups
    q_group = q_bthd.reshape(groups, per * t, h, d)
    out_s, lse_s = decode_attention_reference(q_group, cache["shared_k"], cache["shared_v"], cache["shared_len"])
    out_s = out_s.reshape(b, t, h, d).astype(jnp.float32)
    lse_s = lse_s.reshape(b, t, h)
    out_o, lse_o = masked_partial(q_bthd, k_bskd, v_bskd, mask_bts)
    out, _ = merge_partials([out_s, out_o], [lse_s, lse_o])
    return out.astype(q_bthd.dtype)


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
