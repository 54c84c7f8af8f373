"""photon-jax: PHOTON hierarchical autoregressive language models in JAX."""

__version__ = "0.1.0"
