"""Glue between a run's work directory and its prepared data: prepare on first use, check that
the tokenizer fits the model, and reload the tokenizer a checkpoint was trained with."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from photon_jax.config import Config
from photon_jax.data.prepare import load_manifest, prepare
from photon_jax.data.tokenizer import Tokenizer, check_vocab, load_tokenizer
from photon_jax.errors import UserError


def data_dir_for(cfg: Config, workdir: Path) -> Path:
    return Path(cfg.data.data_dir).expanduser().resolve() if cfg.data.data_dir else workdir / "data"


def ensure_data(cfg: Config, workdir: Path, say=print) -> tuple[dict, Path]:
    """The prepared data for this run (prepared now if missing); its tokenizer must match the model."""
    data_dir = data_dir_for(cfg, workdir)
    if not (data_dir / "manifest.json").exists():
        vocab = cfg.data.vocab_size or cfg.model.vocab_size
        say(f"preparing {cfg.data.corpus} into {data_dir} (tokenizer vocab {vocab}) ...")
        manifest = prepare(cfg.data, data_dir, vocab)
        train = manifest["splits"]["train"]
        val = manifest["splits"]["validation"]
        say(f"prepared {manifest['documents']} documents: {train['tokens']:,} train / {val['tokens']:,} "
            f"validation tokens in {manifest['seconds']:.1f}s")
    manifest = load_manifest(data_dir)
    check_vocab(manifest, cfg.model.vocab_size, what=f"model.vocab_size={cfg.model.vocab_size}")
    return manifest, data_dir


def tokenizer_for(data_dir: Path, manifest: dict) -> Tokenizer:
    return load_tokenizer(data_dir / manifest["tokenizer"]["file"])


def token_byte_lengths_for(data_dir: Path, manifest: dict) -> np.ndarray:
    return tokenizer_for(data_dir, manifest).byte_lengths()


def load_run_tokenizer(cfg: Config, workdir: Path, meta: dict) -> tuple[Tokenizer, Path, dict]:
    """The tokenizer a checkpoint was trained with; refuses one whose hash differs."""
    data_dir = data_dir_for(cfg, workdir)
    manifest = load_manifest(data_dir)
    tokenizer = tokenizer_for(data_dir, manifest)
    expected = meta.get("tokenizer_sha256")
    if expected and tokenizer.sha256 != expected:
        raise UserError(f"tokenizer in {data_dir} (sha256 {tokenizer.sha256[:12]}) is not the one the checkpoint "
                        f"was trained with ({expected[:12]})")
    check_vocab(tokenizer, cfg.model.vocab_size, what=f"the checkpoint's model.vocab_size={cfg.model.vocab_size}")
    return tokenizer, data_dir, manifest
