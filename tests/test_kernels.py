"""Pallas decode-attention kernels vs the pure-jnp reference.

On CPU both kernel bodies (Triton GPU and Mosaic TPU) run in interpret mode, and their
lowerings for cuda / tpu are produced (without compiling) to catch unsupported ops.
Hardware-marked tests run the compiled kernels where a GPU / TPU is present.
Shapes are tiny on purpose: interpret mode costs a compile per shape.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from pallas_kernels import (
    cascade_decode_attention,
    decode_attention,
    decode_attention_reference,
    decode_attention_xla,
    merge_partials,
    resolve_impl,
    sharded_decode_attention,
)
from pallas_kernels.common import kernel_shape_problem
from pallas_kernels.decode_attention_gpu import decode_attention_gpu, gpu_block_config
from pallas_kernels.decode_attention_tpu import decode_attention_tpu, tpu_block_config
from pallas_kernels.dispatch import kernel_sites

KERNELS = {"gpu": decode_attention_gpu, "tpu": decode_attention_tpu}
TOL = {jnp.float32: 1e-5, jnp.bfloat16: 1e-2}


def make_inputs(seed, b, nq, h, kh, d, s, dtype, lengths=None, garbage=0.0):
    """Random q / cache; unused cache slots (>= length) filled with `garbage` (e.g. NaN)."""
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(b, nq, h, d))
    k = rng.normal(size=(b, s, kh, d))
    v = rng.normal(size=(b, s, kh, d))
    if lengths is None:
        lengths = rng.integers(0, s + 1, size=b)
    lengths = np.asarray(lengths, np.int32)
    unused = np.arange(s)[None, :] >= lengths[:, None]
    k[unused] = garbage
    v[unused] = garbage
    return (jnp.asarray(q, dtype), jnp.asarray(k, dtype), jnp.asarray(v, dtype), jnp.asarray(lengths))


def assert_close(out, lse, out_ref, lse_ref, lengths, dtype):
    tol = TOL[dtype]
    out = np.asarray(out.astype(jnp.float32))
    out_ref = np.asarray(out_ref.astype(jnp.float32))
    lse, lse_ref = np.asarray(lse), np.asarray(lse_ref)
    assert out.shape == out_ref.shape and lse.shape == lse_ref.shape
    assert np.all(np.isfinite(out)), "non-finite output"
    np.testing.assert_allclose(out, out_ref, rtol=tol, atol=tol)
    empty = np.asarray(lengths) == 0
    assert np.all(out[empty] == 0.0), "empty rows must give out = 0"
    assert np.all(np.isneginf(lse[empty])), "empty rows must give lse = -inf"
    np.testing.assert_allclose(lse[~empty], lse_ref[~empty], rtol=tol, atol=tol)


# (batch, num_queries, heads, kv_heads, head_dim, cache_len, dtype, lengths, block_k, num_splits)
CASES = [
    # GQA 1, hd 64: empty row, length 1, not a multiple of the block, full cache
    (4, 1, 4, 4, 64, 64, jnp.float32, [0, 1, 37, 64], 16, 2),
    # GQA 4, hd 128, bf16, cache_len not a multiple of the block (partial last block)
    (3, 1, 8, 2, 128, 100, jnp.bfloat16, [1, 100, 0], 32, None),
    # GQA 8, hd 64, two queries per row, several splits
    (2, 2, 8, 1, 64, 130, jnp.float32, [130, 7], 16, 3),
    # GQA 8, hd 128, bf16, default block table / split choice
    (2, 1, 16, 2, 128, 72, jnp.bfloat16, [72, 45], None, None),
    # 9 queries x GQA 8 = 72 query rows: two query tiles in the GPU kernel
    (1, 9, 8, 1, 64, 40, jnp.float32, [33], 16, 2),
]


@pytest.mark.parametrize("body", ["gpu", "tpu"])
@pytest.mark.parametrize("case", CASES,
                         ids=lambda c: f"b{c[0]}q{c[1]}h{c[2]}kv{c[3]}d{c[4]}s{c[5]}-{jnp.dtype(c[6]).name}")
def test_kernel_matches_reference(body, case):
    b, nq, h, kh, d, s, dtype, lengths, block_k, splits = case
    q, k, v, lengths = make_inputs(0, b, nq, h, kh, d, s, dtype, lengths)
    if body == "tpu" and block_k is not None:
        block_k = max(8, block_k)
    out, lse = KERNELS[body](q, k, v, lengths, block_k=block_k, num_splits=splits, interpret=True)
    assert out.dtype == dtype and lse.dtype == jnp.float32
    out_ref, lse_ref = decode_attention_reference(q, k, v, lengths)
    assert_close(out, lse, out_ref, lse_ref, lengths, dtype)


@pytest.mark.parametrize("body", ["gpu", "tpu"])
def test_kernel_random_shapes_with_nan_garbage(body):
    """Random shapes and ragged lengths; unused cache slots hold NaN and must not leak."""
    rng = np.random.default_rng(1 if body == "gpu" else 2)
    for trial in range(2):
        kh = int(rng.choice([1, 2]))
        group = int(rng.choice([1, 4, 8]))
        d = int(rng.choice([64, 128]))
        s = int(rng.integers(20, 90))
        dtype = [jnp.float32, jnp.bfloat16][trial % 2]
        b, nq = int(rng.integers(1, 4)), int(rng.integers(1, 3))
        lengths = rng.integers(0, s + 1, size=b)
        lengths[0] = s if trial == 0 else lengths[0]
        q, k, v, lengths = make_inputs(trial, b, nq, kh * group, kh, d, s, dtype, lengths, garbage=np.nan)
        out, lse = KERNELS[body](q, k, v, lengths, block_k=16, num_splits=int(rng.integers(1, 4)),
                                 interpret=True)
        out_ref, lse_ref = decode_attention_reference(q, k, v, lengths)
        assert_close(out, lse, out_ref, lse_ref, lengths, dtype)


def test_tpu_kernel_mosaic_interpreter():
    """The TPU body under the Mosaic-faithful interpreter: DMA pipeline simulated, uninitialised
    VMEM filled with NaN, out-of-bounds reads raise."""
    from jax.experimental.pallas import tpu as pltpu
    q, k, v, lengths = make_inputs(3, 2, 1, 4, 2, 64, 40, jnp.float32, [0, 33], garbage=np.nan)
    params = pltpu.InterpretParams(uninitialized_memory="nan", out_of_bounds_reads="raise")
    out, lse = decode_attention_tpu(q, k, v, lengths, block_k=16, num_splits=2, interpret=params)
    out_ref, lse_ref = decode_attention_reference(q, k, v, lengths)
    assert_close(out, lse, out_ref, lse_ref, lengths, jnp.float32)


@pytest.mark.parametrize("body", ["gpu", "tpu"])
def test_kernel_mixed_dtypes_compute_in_cache_dtype(body):
    """f32 queries over a bf16 cache: computed in bf16 (no cache copy), returned in f32."""
    q, k, v, lengths = make_inputs(13, 2, 1, 8, 2, 64, 40, jnp.bfloat16, [40, 11])
    q32 = q.astype(jnp.float32)
    out, lse = KERNELS[body](q32, k, v, lengths, block_k=16, interpret=True)
    assert out.dtype == jnp.float32
    out_ref, lse_ref = decode_attention_reference(q, k, v, lengths)
    assert_close(out, lse, out_ref.astype(jnp.float32), lse_ref, lengths, jnp.bfloat16)


def test_reference_against_explicit_softmax():
    q, k, v, lengths = make_inputs(4, 2, 2, 8, 2, 16, 24, jnp.float32, [24, 9])
    out, lse = decode_attention_reference(q, k, v, lengths)
    for bi, n in enumerate(np.asarray(lengths)):
        for hi in range(8):
            logits = np.asarray(q[bi, :, hi]) @ np.asarray(k[bi, :n, hi // 4]).T / 4.0
            ls = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
            p = np.exp(logits - ls[:, None])
            np.testing.assert_allclose(np.asarray(out[bi, :, hi]), p @ np.asarray(v[bi, :n, hi // 4]), atol=1e-5)
            np.testing.assert_allclose(np.asarray(lse[bi, :, hi]), ls, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_xla_path_matches_reference(dtype):
    q, k, v, lengths = make_inputs(5, 3, 2, 8, 2, 64, 50, dtype, [0, 50, 17], garbage=np.nan)
    out, lse = decode_attention_xla(q, k, v, lengths)
    out_ref, lse_ref = decode_attention_reference(q, k, v, lengths)
    assert_close(out, lse, out_ref, lse_ref, lengths, dtype)


# ----------------------------------------------------------------------------- merge

def _split_cache(k, v, lengths, cut):
    """[0, cut) and [cut, s) of the cache, with the matching lengths."""
    return ((k[:, :cut], v[:, :cut], jnp.minimum(lengths, cut)),
            (k[:, cut:], v[:, cut:], jnp.maximum(lengths - cut, 0)))


@pytest.mark.parametrize("use_kernel", [False, True])
def test_merge_of_split_cache_equals_whole(use_kernel):
    rng = np.random.default_rng(6)
    q, k, v, lengths = make_inputs(6, 3, 1, 8, 2, 64, 48, jnp.float32, [48, 20, 0])
    cut = int(rng.integers(1, 48))
    attend = ((lambda *a: decode_attention_gpu(*a, block_k=16, interpret=True)) if use_kernel
              else decode_attention_reference)
    parts = [attend(q, *part) for part in _split_cache(k, v, lengths, cut)]
    out, lse = merge_partials([p[0] for p in parts], [p[1] for p in parts])
    out_ref, lse_ref = decode_attention_reference(q, k, v, lengths)
    assert_close(out, lse, out_ref, lse_ref, lengths, jnp.float32)


def test_merge_with_empty_part_is_exact():
    q, k, v, lengths = make_inputs(7, 2, 2, 4, 2, 64, 16, jnp.float32, [16, 3])
    out, lse = decode_attention_reference(q, k, v, lengths)
    empty_out, empty_lse = decode_attention_reference(q, k, v, jnp.zeros_like(lengths))
    assert np.all(np.asarray(empty_out) == 0) and np.all(np.isneginf(np.asarray(empty_lse)))
    for order in ([(out, lse), (empty_out, empty_lse)], [(empty_out, empty_lse), (out, lse)]):
        m_out, m_lse = merge_partials([o for o, _ in order], [l for _, l in order])
        np.testing.assert_array_equal(np.asarray(m_out), np.asarray(out))
        np.testing.assert_array_equal(np.asarray(m_lse), np.asarray(lse))
    all_out, all_lse = merge_partials([empty_out, empty_out], [empty_lse, empty_lse])
    assert np.all(np.asarray(all_out) == 0) and np.all(np.isneginf(np.asarray(all_lse)))


def test_cascade_attention_equals_concatenated_cache():
    """Shared prompt cache (per prompt) + per-sample suffix cache == one concatenated cache."""
    prompts, samples, h, kh, d = 2, 3, 4, 2, 64
    qs, ks, vs, len_s = make_inputs(8, prompts, 1, h, kh, d, 24, jnp.float32, [24, 10])
    q, kx, vx, len_x = make_inputs(9, prompts * samples, 2, h, kh, d, 8, jnp.float32, [0, 3, 8, 1, 5, 8])
    out, lse = cascade_decode_attention(q, (ks, vs, len_s), (kx, vx, len_x), num_samples=samples,
                                        impl="pallas", block_k=16)
    # Explicit per-sample cache: valid prompt entries then valid suffix entries.
    cat_len = 24 + 8
    k_cat = np.zeros((prompts * samples, cat_len, kh, d), np.float32)
    v_cat = np.zeros_like(k_cat)
    lens = []
    for i in range(prompts * samples):
        p, n_p, n_x = i // samples, int(len_s[i // samples]), int(len_x[i])
        k_cat[i, :n_p], v_cat[i, :n_p] = ks[p, :n_p], vs[p, :n_p]
        k_cat[i, n_p:n_p + n_x], v_cat[i, n_p:n_p + n_x] = kx[i, :n_x], vx[i, :n_x]
        lens.append(n_p + n_x)
    out_ref, lse_ref = decode_attention_reference(q, jnp.asarray(k_cat), jnp.asarray(v_cat), jnp.asarray(lens))
    assert_close(out, lse, out_ref, lse_ref, np.asarray(lens), jnp.float32)


# ----------------------------------------------------------------------------- windows and head dims

# (start, end) per row: from 0, from the middle, empty in the middle (start = end), up to the cache end
WINDOWS = ([0, 13, 21, 5], [29, 40, 21, 64])


@pytest.mark.parametrize("body", ["gpu", "tpu"])
@pytest.mark.parametrize("d", [52, 56, 60, 64, 128])
def test_kernel_reads_a_window_at_any_head_dim(body, d):
    """Rows read slots [start, end) of the cache: the paper's head dims 52 / 56 / 60 (the GPU kernel loads
    a power-of-two tile and masks the extra columns) and 64 / 128; garbage (NaN) outside every window."""
    starts, ends = (np.asarray(x, np.int32) for x in WINDOWS)
    q, k, v, _ = make_inputs(d, 4, 1, 8, 2, d, 64, jnp.float32, ends)
    outside = (np.arange(64)[None, :] < starts[:, None])[:, :, None, None]
    k, v = (jnp.where(outside, jnp.nan, x) for x in (k, v))
    out, lse = KERNELS[body](q, k, v, jnp.asarray(ends), jnp.asarray(starts), interpret=True, block_k=16)
    out_ref, lse_ref = decode_attention_reference(q, k, v, jnp.asarray(ends), starts_b=jnp.asarray(starts))
    assert_close(out, lse, out_ref, lse_ref, ends - starts, jnp.float32)
    out_x, lse_x = decode_attention_xla(q, k, v, jnp.asarray(ends), starts_b=jnp.asarray(starts))
    assert_close(out_x, lse_x, out_ref, lse_ref, ends - starts, jnp.float32)


def test_reference_window_is_the_prefix_difference():
    """Independent of the window code: attention over [start, end) equals attention over a cache whose
    slots before `start` were cut off."""
    q, k, v, _ = make_inputs(3, 2, 1, 4, 2, 16, 24, jnp.float32, [24, 24])
    out, lse = decode_attention_reference(q, k, v, jnp.array([20, 9]), starts_b=jnp.array([6, 2]))
    for row, (start, end) in enumerate(((6, 20), (2, 9))):
        o, l = decode_attention_reference(q[row:row + 1], k[row:row + 1, start:], v[row:row + 1, start:],
                                          jnp.array([end - start]))
        np.testing.assert_allclose(out[row:row + 1], o, atol=1e-6)
        np.testing.assert_allclose(lse[row:row + 1], l, atol=1e-6)


def test_kernel_sites_count_the_kernel_launches():
    q, k, v, lengths = make_inputs(2, 2, 1, 4, 2, 52, 16, jnp.float32, [16, 3])
    one = lambda q, k: decode_attention(q, k, v, lengths, impl="pallas", block_k=16)[0]  # noqa: E731
    assert kernel_sites(one, q, k) == 1
    assert kernel_sites(lambda q, k: decode_attention(q, k, v, lengths, impl="xla")[0], q, k) == 0
    both = lambda q, k: jax.lax.cond(q.sum() > 0, lambda: one(q, k), lambda: one(2 * q, k))  # noqa: E731
    assert kernel_sites(jax.jit(both), q, k) == 2  # every branch, inside jit


# ----------------------------------------------------------------------------- dispatch

@pytest.mark.parametrize("platform", ["cpu", "gpu", "tpu"])
def test_auto_picks_the_compiled_kernel_on_gpu_and_tpu_and_xla_on_cpu(platform):
    for d in (52, 56, 60, 64, 128):  # the paper's head dims included
        for dtype in (jnp.bfloat16, jnp.float32):
            expected = ("xla", False) if platform == "cpu" else (platform, False)  # compiled, not interpreted
            assert resolve_impl("auto", d, dtype, platform=platform) == expected
    # a shape no kernel takes falls back to XLA everywhere; "xla" never takes a kernel
    assert resolve_impl("auto", 320, jnp.bfloat16, platform=platform) == ("xla", False)
    assert resolve_impl("xla", 64, jnp.bfloat16, platform=platform) == ("xla", False)
    # float16: the GPU kernel takes it; Mosaic rejects float16 loads, so TPU stays on XLA (tests/test_aot_kernels.py
    # compiled both with the real compilers)
    expected = {"cpu": ("xla", False), "gpu": ("gpu", False), "tpu": ("xla", False)}[platform]
    assert resolve_impl("auto", 64, jnp.float16, platform=platform) == expected


def test_a_float16_cache_on_the_tpu_kernel_is_refused_by_name():
    assert "Mosaic" in kernel_shape_problem(64, jnp.float16, "tpu")
    assert kernel_shape_problem(64, jnp.float16, "gpu") is None
    q, k, v, lengths = make_inputs(11, 1, 1, 4, 2, 64, 16, jnp.float16, [16])
    with pytest.raises(ValueError, match="float16 caches do not compile under Mosaic"):
        decode_attention(q, k, v, lengths, impl="pallas", target="tpu")


def test_dispatch_impls_agree_on_cpu():
    assert resolve_impl("auto", 64, jnp.float32) == ("xla", False)
    for d in (52, 56, 60, 64, 128):
        assert kernel_shape_problem(d, jnp.bfloat16) is None
    assert "head dim 320" in kernel_shape_problem(320, jnp.float32)
    assert "int8" in kernel_shape_problem(64, jnp.int8)
    assert resolve_impl("pallas", 64, jnp.float32) == ("gpu", True)
    assert resolve_impl("pallas", 64, jnp.float32, target="tpu") == ("tpu", True)
    with pytest.raises(ValueError):
        resolve_impl("fast", 64, jnp.float32)
    q, k, v, lengths = make_inputs(10, 3, 1, 8, 2, 64, 40, jnp.float32, [40, 0, 13])
    results = {impl: decode_attention(q, k, v, lengths, impl=impl, block_k=16)
               for impl in ("xla", "pallas", "auto")}
    results["pallas-tpu"] = decode_attention(q, k, v, lengths, impl="pallas", target="tpu", block_k=16)
    out_ref, lse_ref = decode_attention_reference(q, k, v, lengths)
    for out, lse in results.values():
        assert_close(out, lse, out_ref, lse_ref, lengths, jnp.float32)


def test_dispatch_is_differentiable_and_jittable():
    q, k, v, lengths = make_inputs(11, 2, 1, 4, 2, 64, 24, jnp.float32, [24, 5])

    def loss(fn, q, k, v):
        out, lse = fn(q, k, v, lengths)
        return jnp.sum(out ** 2) + jnp.sum(jnp.where(jnp.isfinite(lse), lse, 0.0))

    kernel = lambda q, k, v, n: decode_attention(q, k, v, n, impl="pallas", block_k=16)  # noqa: E731
    grads = jax.jit(jax.grad(lambda *a: loss(kernel, *a), argnums=(0, 1, 2)))(q, k, v)
    grads_ref = jax.grad(lambda *a: loss(decode_attention_reference, *a), argnums=(0, 1, 2))(q, k, v)
    for g, g_ref in zip(grads, grads_ref):
        np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), atol=1e-5)


def _mesh(shape, names):
    devices = jax.devices()
    if len(devices) < int(np.prod(shape)):
        pytest.skip(f"needs {int(np.prod(shape))} devices, have {len(devices)}")
    return jax.sharding.Mesh(np.array(devices[:int(np.prod(shape))]).reshape(shape), names)


@pytest.mark.parametrize("spec", [P("data", None, "model", None), P("data", "model", None, None)],
                         ids=["batch+kv_heads", "batch+cache_len"])
def test_sharded_decode_attention_matches_unsharded(spec):
    mesh = _mesh((2, 4), ("data", "model"))
    q, k, v, lengths = make_inputs(12, 4, 1, 8, 4, 64, 64, jnp.float32, [64, 0, 17, 40])
    out_ref, lse_ref = decode_attention_reference(q, k, v, lengths)
    for impl in (("xla", "pallas") if spec[1] is None else ("pallas",)):
        out, lse = sharded_decode_attention(q, k, v, lengths, mesh=mesh, cache_spec=spec, impl=impl, block_k=16)
        assert_close(out, lse, out_ref, lse_ref, lengths, jnp.float32)


# ----------------------------------------------------------------------------- lowering (no hardware)

def _export_lowering(fn, platform, shapes, dtype, **kwargs):
    from jax import export
    b, nq, h, kh, d, s = shapes
    args = (jax.ShapeDtypeStruct((b, nq, h, d), dtype), jax.ShapeDtypeStruct((b, s, kh, d), dtype),
            jax.ShapeDtypeStruct((b, s, kh, d), dtype), jax.ShapeDtypeStruct((b,), jnp.int32))
    checks = [export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")] if platform == "cuda" else []
    try:
        exp = export.export(jax.jit(lambda *a: fn(*a, **kwargs)), platforms=[platform],
                            disabled_checks=checks)(*args)
    except (ImportError, NotImplementedError) as e:  # jaxlib built without this backend's bindings
        pytest.skip(f"cannot lower for {platform} here: {e}")
    return exp.mlir_module()


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("shapes", [(4, 1, 32, 8, 128, 4096), (2, 2, 8, 2, 64, 1000), (1, 9, 8, 1, 64, 300)])
def test_kernels_lower_for_cuda_and_tpu(shapes, dtype):
    """The Triton and Mosaic lowerings of the kernel bodies succeed (compilation itself needs hardware)."""
    txt = _export_lowering(decode_attention_gpu, "cuda", shapes, dtype)
    assert "__gpu$xla.gpu.triton" in txt
    _, warps, stages = gpu_block_config(shapes[4], dtype)
    assert f"num_warps = {warps}" in txt and f"num_stages = {stages}" in txt
    txt = _export_lowering(decode_attention_tpu, "tpu", shapes, dtype)
    assert "tpu_custom_call" in txt


def test_block_tables():
    assert gpu_block_config(128, jnp.bfloat16) == (128, 4, 2)
    assert gpu_block_config(64, jnp.float32)[0] == 64
    hb, bk = tpu_block_config(8, 64, jnp.bfloat16)
    assert (hb * 64) % 128 == 0 and bk % 128 == 0
    assert tpu_block_config(8, 128, jnp.float32) == (1, 512)
    assert tpu_block_config(3, 64, jnp.float32)[0] == 3      # no 128-lane divisor: all kv heads


# ----------------------------------------------------------------------------- hardware

def _hardware_cases():
    for dtype in (jnp.bfloat16, jnp.float32):
        for d in (64, 128):
            for group in (1, 4, 8):
                yield dtype, d, group


def _requires(platform: str):
    if jax.default_backend() != platform:
        pytest.skip(f"requires a {platform.upper()}: default backend is {jax.default_backend()}")


ON_HARDWARE = [pytest.param("gpu", marks=pytest.mark.gpu), pytest.param("tpu", marks=pytest.mark.tpu)]


@pytest.mark.parametrize("platform", ON_HARDWARE)
def test_compiled_kernel_matches_reference(platform):
    """The decode kernel compiled for the platform (Triton on GPU, Mosaic on TPU), not interpreted."""
    _requires(platform)
    kernel = {"gpu": decode_attention_gpu, "tpu": decode_attention_tpu}[platform]
    for i, (dtype, d, group) in enumerate(_hardware_cases()):
        kh = 2
        q, k, v, lengths = make_inputs(i, 4, 1, kh * group, kh, d, 1000, dtype, [0, 1, 777, 1000])
        out, lse = kernel(q, k, v, lengths)
        out_ref, lse_ref = decode_attention_reference(q, k, v, lengths)
        assert_close(out, lse, out_ref, lse_ref, lengths, dtype)


def _fused_training_cases():
    """Causal self-attention as training runs it (bf16, grouped-query, the 600M head dim 52 and 64),
    plain and block-local: (T, block, head_dim)."""
    return [(256, 0, 52), (256, 0, 64), (512, 64, 64)]


def _check_fused_against_reference(fused):
    from photon_jax.model.attention import CausalMask, reference_attention

    for t, block, d in _fused_training_cases():
        rng = np.random.default_rng(t + d)
        q, k, v = (jnp.asarray(rng.standard_normal((2, t, n, d)), jnp.bfloat16) for n in (8, 2, 2))
        mask = CausalMask(block).dense(t)
        loss = lambda fn: lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v).astype(jnp.float32)))  # noqa: E731
        reference = lambda q, k, v: reference_attention(q, k, v, mask)  # noqa: E731
        kernel = lambda q, k, v: fused(q, k, v, block)  # noqa: E731
        np.testing.assert_allclose(np.asarray(jax.jit(kernel)(q, k, v), np.float32),
                                   np.asarray(reference(q, k, v), np.float32), atol=3e-2, rtol=3e-2)
        grads = jax.jit(jax.grad(loss(kernel), argnums=(0, 1, 2)))(q, k, v)
        for a, b in zip(grads, jax.grad(loss(reference), argnums=(0, 1, 2))(q, k, v)):
            np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=0.15, rtol=0.1)


def _training_attention(platform: str):
    if platform == "gpu":
        from photon_jax.model.attention import cudnn_takes, fused_causal_attention

        assert cudnn_takes(jnp.bfloat16, 52)  # the 600M shape goes to cuDNN (padded to 56)
        return fused_causal_attention
    from pallas_kernels.flash_attention_tpu import causal_attention_tpu

    return lambda q, k, v, block: causal_attention_tpu(q, k, v, block)


@pytest.mark.parametrize("platform", ON_HARDWARE)
def test_compiled_training_attention_matches_reference(platform):
    """Training attention on the platform's fused path (cuDNN on GPU, splash attention on TPU)."""
    _requires(platform)
    _check_fused_against_reference(_training_attention(platform))
