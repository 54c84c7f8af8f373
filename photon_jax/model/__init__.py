"""Model families: PHOTON (any number of levels; one level = Block Transformer) and vanilla LLaMA."""

from photon_jax.config import ModelConfig
from photon_jax.model.photon import PhotonLM
from photon_jax.model.vanilla import VanillaLM


def build_model(cfg: ModelConfig):
    return VanillaLM(cfg) if cfg.family == "vanilla" else PhotonLM(cfg)


__all__ = ["build_model", "PhotonLM", "VanillaLM"]
