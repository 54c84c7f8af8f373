"""Test setup: 8 fake CPU devices (set before jax is imported) and tiny shared configs.

PHOTON_TEST_PLATFORM=gpu|cuda|tpu|auto (default cpu) runs on an accelerator instead (for the
hardware-marked tests, e.g. scripts/gpu_checks.sh): JAX_PLATFORMS is set to that platform with the
CPU as second backend ("auto": JAX_PLATFORMS left as it is) and no fake CPU devices are forced.
"""

import atexit
import os
import re
import shutil
import tempfile

# Hermetic: no network for Hugging Face datasets / hub (the harness tests use local task files), and
# their caches in a temporary directory instead of ~/.cache.
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="photon-test-hf-"))

# One persistent XLA compilation cache for the run: the first process (pytest itself, or the xdist
# controller) creates it; the workers and every subprocess a test starts inherit it through the
# environment, so a program compiled once (the same tiny model in another test, another run of a
# sweep, a CLI subprocess) is loaded instead of compiled again. Removed when that process exits; a
# cache the caller set is used and kept. PHOTON_TEST_COMPILE_CACHE=0 compiles everything afresh.
if os.environ.get("PHOTON_TEST_COMPILE_CACHE", "1") != "0" and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    _compile_cache = tempfile.mkdtemp(prefix="photon-test-xla-cache-")
    os.environ.update(JAX_COMPILATION_CACHE_DIR=_compile_cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    atexit.register(shutil.rmtree, _compile_cache, ignore_errors=True)

_PLATFORM = os.environ.get("PHOTON_TEST_PLATFORM", "cpu").strip().lower() or "cpu"
if _PLATFORM == "cpu":
    _other_xla_flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
    os.environ["XLA_FLAGS"] = " ".join([*_other_xla_flags.split(), "--xla_force_host_platform_device_count=8"])
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
elif _PLATFORM != "auto":
    os.environ["JAX_PLATFORMS"] = {"gpu": "cuda"}.get(_PLATFORM, _PLATFORM) + ",cpu"

import pytest  # noqa: E402

from photon_jax.config import load_config  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def release_compiled_programs():
    """After each test module, drop its compiled programs. A whole-suite process otherwise keeps every
    executable it ever compiled, and their memory maps add up until XLA's compiler fails (seen as a
    segfault or abort in backend_compile late in a full run)."""
    yield
    import jax

    from photon_jax.generation import engine

    engine.clear_compiled()
    jax.clear_caches()


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


def random_variables(model, seq_len, seed=0):
    """Random values in the model's exact variable structure (jax.eval_shape of the real init).

    Compiling the real init costs seconds per config on a CPU; the properties tested with these
    hold for any parameter values, and random norm scales and biases exercise more than ones/zeros.
    """
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np

    abstract = nn.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, seq_len), jnp.int32)))
    rng = np.random.default_rng(seed)
    width = model.cfg.width

    def fill(path, leaf):
        name = path[-1].key
        z = rng.standard_normal(leaf.shape)
        if name == "scale":
            z = 1.0 + 0.1 * z
        elif name == "bias":
            z = 0.1 * z
        elif name != "embedding":
            z = z / np.sqrt(width)
        return jnp.asarray(z, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, abstract)


def prepare_plays(root, vocab: int, first: int = 0, count: int = 3, name: str = "data", corpus_name: str = ""):
    """A small real corpus (bundled plays first..first+count) prepared with a small vocabulary into
    root/<name> (the plays are copied to root/<corpus_name>, default <name>_plays)."""
    import shutil

    from photon_jax.config import DataConfig
    from photon_jax.data.preparation.corpus import shakespeare_files
    from photon_jax.data.preparation.prepare import prepare

    corpus = root / (corpus_name or f"{name}_plays")
    corpus.mkdir()
    for path in shakespeare_files()[first:first + count]:
        shutil.copy(path, corpus / path.name)
    prepare(DataConfig(corpus=str(corpus)), root / name, vocab)
    return root / name


def prepare_few_plays(root, vocab: int, plays: int = 3):
    """The first few bundled plays, copied to root/plays and prepared into root/data."""
    return prepare_plays(root, vocab, 0, plays, corpus_name="plays")


def prepare_two_corpora(root, vocab: int):
    """root/data (plays 0-2) and root/other (plays 3-4): two tokenizers of the same size over different
    text, for the tests that must tell a run's data from another run's."""
    return prepare_plays(root, vocab, 0, 3, "data"), prepare_plays(root, vocab, 3, 2, "other")


def use_one_device(monkeypatch):
    """jax.devices() -> the first device only: a run's default mesh is then (1, 1, 1)."""
    import jax

    monkeypatch.setattr(jax, "devices", lambda *a: jax.local_devices()[:1])


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


# The longest files, longest first (timed: docs/setup.md); scripts/test.sh hands whole files to parallel
# workers in collection order, so these start first and no worker ends the suite on one of them alone.
# The notebook is one test of about 5.5 minutes of CPU: it starts first. test_sharding.py (no slow test, so
# it used to start among the last files) runs its matrix for minutes.
LONGEST_FIRST = ("test_notebook.py", "test_spmd.py", "test_sweep.py", "test_sharding.py", "test_prepare_parallel.py",
                 "test_reliability.py", "test_train.py", "test_slurm.py", "test_serve_engine.py", "test_bench.py",
                 "test_install.py", "test_run_tracking.py", "test_readme_road.py", "test_harness.py", "test_serve.py",
                 "test_multihost.py", "test_serve_multihost.py", "test_interop.py")


def pytest_collection_modifyitems(session, config, items):
    """The LONGEST_FIRST files, then the other files holding a `slow` test, then the rest (stable order
    otherwise)."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}

    def rank(item):
        if item.path.name in LONGEST_FIRST:
            return LONGEST_FIRST.index(item.path.name)
        return len(LONGEST_FIRST) + (item.path not in slow_files)
    items.sort(key=rank)
