"""Pallas kernels for photon-jax (GPU via Triton, TPU via Mosaic), each with a pure-jnp reference.

All attention functions return (out, lse) so partials over several caches merge exactly
(merge.merge_partials).  Shapes: q (batch, num_queries, heads, head_dim), caches
(batch, cache_len, kv_heads, head_dim), lengths (batch,).

    decode_attention(q, k, v, lengths, impl="auto"|"xla"|"pallas")     dispatch.py
    sharded_decode_attention(..., mesh=, cache_spec=)                   dispatch.py
    decode_attention_reference / decode_attention_xla                   reference.py
    merge_partials / merge_two / cascade_decode_attention               merge.py
    decode_attention_gpu (Triton) / decode_attention_tpu (Mosaic)       decode_attention_{gpu,tpu}.py
"""

from pallas_kernels.dispatch import decode_attention, resolve_impl, sharded_decode_attention
from pallas_kernels.merge import cascade_decode_attention, merge_two
from pallas_kernels.reference import decode_attention_reference, decode_attention_xla, merge_partials

__all__ = [
    "decode_attention",
    "sharded_decode_attention",
    "resolve_impl",
    "decode_attention_reference",
    "decode_attention_xla",
    "merge_partials",
    "merge_two",
    "cascade_decode_attention",
]
