"""Our vanilla model <-> Hugging Face `LlamaForCausalLM`: config fields and weight names/layouts.

The two are the same network (pre-norm RMSNorm blocks, grouped-query attention with split-half
rotary embeddings, SwiGLU, no biases, scale 1/sqrt(head_dim)); only names and layouts differ:

    ours (unrolled layers)                          HF (torch Linear weights are [out, in])
    embed/embedding                 [V, D]          model.embed_tokens.weight      [V, D]
    stack/layers_i/attention_norm/scale  [D]        model.layers.i.input_layernorm.weight
    .../attention/query/kernel      [D, H, hd]      model.layers.i.self_attn.q_proj.weight [H*hd, D]
    .../attention/key|value/kernel  [D, K, hd]      ...self_attn.k_proj|v_proj.weight      [K*hd, D]
    .../attention/out/kernel        [H, hd, D]      ...self_attn.o_proj.weight             [D, H*hd]
    stack/layers_i/mlp_norm/scale   [D]             model.layers.i.post_attention_layernorm.weight
    .../mlp/gate|up/kernel          [D, F]          ...mlp.gate_proj|up_proj.weight        [F, D]
    .../mlp/down/kernel             [F, D]          ...mlp.down_proj.weight                [D, F]
    stack/final_norm/scale          [D]             model.norm.weight
    lm_head/kernel                  [D, V]          lm_head.weight [V, D] (absent when tied)
"""

from __future__ import annotations

import numpy as np

from photon_jax.config import ModelConfig
from photon_jax.errors import UserError

ARCHITECTURE = "LlamaForCausalLM"


def llama_config(cfg: ModelConfig, max_positions: int, bos_id: int, eos_id: int, pad_id: int,
                 torch_dtype: str = "float32") -> dict:
    return {
        "architectures": [ARCHITECTURE], "model_type": "llama",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.width, "intermediate_size": cfg.ffn_width,
        "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.head_width, "hidden_act": "silu",
        "max_position_embeddings": max_positions, "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
        "rope_scaling": None, "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0,
        "tie_word_embeddings": cfg.tie_embeddings, "initializer_range": 0.02, "use_cache": True,
        "bos_token_id": bos_id if bos_id >= 0 else None, "eos_token_id": eos_id, "pad_token_id": pad_id,
        "torch_dtype": torch_dtype,
    }


def model_config_from_llama(hf: dict, where: str) -> ModelConfig:
    """The vanilla ModelConfig of a LLaMA config.json; anything this architecture cannot express is refused."""
    def need(key):
        if key not in hf:
            raise UserError(f"{where}: config.json has no {key}")
        return hf[key]

    if hf.get("model_type") != "llama":
        raise UserError(f"{where}: model_type {hf.get('model_type')!r} is not 'llama'")
    unsupported = [(k, hf.get(k)) for k, ok in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False))
                   if hf.get(k, ok) != ok]
    if hf.get("rope_scaling") not in (None, {}):
        unsupported.append(("rope_scaling", hf["rope_scaling"]))
    rope = hf.get("rope_parameters") or {}  # transformers >= 5 keeps rope_theta here
    if rope.get("rope_type", "default") != "default":
        unsupported.append(("rope_parameters.rope_type", rope["rope_type"]))
    if unsupported:
        key, value = unsupported[0]
        raise UserError(f"{where}: {key}={value!r} is not supported (LLaMA with silu, no biases, no rope scaling)")
    width, heads = int(need("hidden_size")), int(need("num_attention_heads"))
    head_dim = int(hf.get("head_dim") or width // heads)
    return ModelConfig(family="vanilla", vocab_size=int(need("vocab_size")), width=width,
                       ffn_width=int(need("intermediate_size")), num_heads=heads,
                       num_kv_heads=int(hf.get("num_key_value_heads") or heads),
                       head_dim=0 if head_dim == width // heads else head_dim,
                       rope_theta=float(hf.get("rope_theta") or rope.get("rope_theta") or 10000.0),
                       norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
                       tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
                       num_layers=int(need("num_hidden_layers")), dtype="float32", param_dtype="float32")


def _layer_names(i: int) -> dict[str, tuple[str, ...]]:
    """HF name -> our path under stack/layers_i."""
    p = f"model.layers.{i}."
    return {p + "input_layernorm.weight": ("attention_norm", "scale"),
            p + "self_attn.q_proj.weight": ("attention", "query", "kernel"),
            p + "self_attn.k_proj.weight": ("attention", "key", "kernel"),
            p + "self_attn.v_proj.weight": ("attention", "value", "kernel"),
            p + "self_attn.o_proj.weight": ("attention", "out", "kernel"),
            p + "post_attention_layernorm.weight": ("mlp_norm", "scale"),
            p + "mlp.gate_proj.weight": ("mlp", "gate", "kernel"),
            p + "mlp.up_proj.weight": ("mlp", "up", "kernel"),
            p + "mlp.down_proj.weight": ("mlp", "down", "kernel")}


def _to_hf(path: tuple[str, ...], ours: np.ndarray) -> np.ndarray:
    if path[-1] != "kernel":
        return ours
    if path[-2] in ("query", "key", "value"):  # [D, H, hd] -> [H*hd, D]
        return ours.reshape(ours.shape[0], -1).T
    if path[-2] == "out":  # [H, hd, D] -> [D, H*hd]
        return ours.reshape(-1, ours.shape[-1]).T
    return ours.T  # Dense [in, out] -> [out, in]


def _from_hf(path: tuple[str, ...], hf: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    if path[-1] != "kernel":
        return hf
    if path[-2] == "query":
        return hf.T.reshape(cfg.width, cfg.num_heads, cfg.head_width)
    if path[-2] in ("key", "value"):
        return hf.T.reshape(cfg.width, cfg.kv_heads, cfg.head_width)
    if path[-2] == "out":
        return hf.T.reshape(cfg.num_heads, cfg.head_width, cfg.width)
    return hf.T


def _all_names(cfg: ModelConfig) -> dict[str, tuple[str, ...]]:
    """HF name -> our full path (unrolled layers), in HF's order."""
    names = {"model.embed_tokens.weight": ("embed", "embedding")}
    for i in range(cfg.num_layers):
        names.update({hf: ("stack", f"layers_{i}", *ours) for hf, ours in _layer_names(i).items()})
    names["model.norm.weight"] = ("stack", "final_norm", "scale")
    if not cfg.tie_embeddings:
        names["lm_head.weight"] = ("lm_head", "kernel")
    return names


def _get(tree: dict, path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree


def to_llama_tensors(cfg: ModelConfig, params: dict) -> dict[str, np.ndarray]:
    """Unrolled params (numpy) -> HF state dict."""
    return {hf: _to_hf(path, np.asarray(_get(params, path))) for hf, path in _all_names(cfg).items()}


def from_llama_tensors(cfg: ModelConfig, get, where: str) -> dict:
    """HF tensors (get(name) -> array, read lazily) -> unrolled params, shapes checked against the config."""
    params: dict = {}
    for hf, path in _all_names(cfg).items():
        array = np.asarray(get(hf))
        try:
            value = _from_hf(path, array, cfg)
        except ValueError:
            raise UserError(f"{where}: {hf} has shape {array.shape}, which does not fit its config.json") from None
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return params
