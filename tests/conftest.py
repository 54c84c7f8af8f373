"""Test setup: 8 fake CPU devices (set before jax is imported) and tiny shared configs."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

from photon_jax.config import load_config  # noqa: E402


def tiny_overrides(chunks=(4, 4), alignment="A", vocab=64, width=32, layers=1, seq_mult=4, **extra):
    levels = ",".join(f"{{chunk: {c}, encoder_layers: {layers}, decoder_layers: {layers}}}" for c in chunks)
    seq_len = seq_mult
    for c in chunks:
        seq_len *= c
    out = [f"model.vocab_size={vocab}", f"model.width={width}", f"model.ffn_width={2 * width}",
           "model.num_heads=4", "model.num_kv_heads=2", "model.dtype=float32", f"model.alignment={alignment}",
           f"model.levels=[{levels}]", f"data.seq_len={seq_len}"]
    out += [f"{k.replace('__', '.')}={v}" for k, v in extra.items()]
    return out


def tiny_config(family="photon", **kwargs):
    if family == "vanilla":
        over = tiny_overrides(**kwargs) + ["model.family=vanilla", "model.num_layers=2"]
    else:
        over = tiny_overrides(**kwargs)
    return load_config(overrides=over)


@pytest.fixture(scope="module")
def fast_compile():
    """Tiny models: compile time dominates, and XLA's optimisations do not change what is tested."""
    import jax

    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)


@pytest.fixture
def tiny_photon():
    return tiny_config()
