"""Parameter layout conversion between scanned and unrolled layer stacks.

Scanned stacks keep every layer under "layers" with a leading layer axis; unrolled stacks
name them "layers_0", "layers_1", ... Decoding runs unrolled: inside lax.scan a per-layer
KV-cache update becomes a scan output, which rewrites the whole stacked cache every step
(measured on CPU: vanilla decode about 3x slower per step than unrolled).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from photon_jax.config import ModelConfig


def unroll_layers(tree):
    """Scanned-layout params -> unrolled-layout params (a no-op on unrolled params)."""
    if not isinstance(tree, dict):
        return tree
    out = {}
    for key, value in tree.items():
        if key == "layers":
            n = jax.tree.leaves(value)[0].shape[0]
            for i in range(n):
                out[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], value)
        else:
            out[key] = unroll_layers(value)
    return out


def unrolled(cfg: ModelConfig, params) -> tuple[ModelConfig, dict]:
    """The same model with unrolled layers, and its params."""
    if not cfg.scan_layers:
        return cfg, params
    return dataclasses.replace(cfg, scan_layers=False), unroll_layers(params)


def roll_layers(tree):
    """Unrolled-layout params -> scanned layout (layers_0..layers_{n-1} stacked under "layers")."""
    if not isinstance(tree, dict):
        return tree
    numbered = sorted((int(k.split("_")[1]), k) for k in tree if k.startswith("layers_") and k[7:].isdigit())
    out = {k: roll_layers(v) for k, v in tree.items() if not (k.startswith("layers_") and k[7:].isdigit())}
    if numbered:
        layers = [tree[k] for _, k in numbered]
        out["layers"] = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *layers)
    return out
