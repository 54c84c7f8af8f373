"""Checkpoints other tools can read: Hugging Face safetensors + config.json, both ways (docs/interop.md)."""
