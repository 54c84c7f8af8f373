"""One-command GPU check of the decode-attention kernels: correctness, speed, bandwidth.

    python scripts/gpu_check.py --out DIR            # on a GPU (e.g. an H200)
    python scripts/gpu_check.py --out DIR --interpret # anywhere: tiny interpret-mode smoke

A command-line check and benchmark of the kernels in pallas_kernels/ (which holds only kernels,
references and dispatch); run from anywhere, it imports them from this checkout.

On a GPU it
  (a) checks the compiled Triton kernel against the pure-jnp reference (bf16/fp32,
      head dims 64/128, GQA 1/4/8, ragged lengths incl. 0, 1, non-multiples of the
      block, full), checks decode_attention(impl="auto") against the reference for
      head dims 52/56/60, and records what dispatch.resolve_impl("auto", d, dtype)
      picks for d in 52/56/60/64/128 and bf16/fp32 (it must be "gpu" on a GPU),
  (b) times decode attention in bf16 over cache lengths 1k..64k and batch 1..256:
      the Pallas kernel, the XLA path (reference.decode_attention_xla), and
      jax.nn.dot_product_attention with a length mask (implementation xla and cudnn),
      skipping combos that do not fit in memory,
  (c) measures device-to-device copy bandwidth (a large array copy, read + write
      bytes) and reports each path's achieved GB/s against it,
and writes DIR/kernels.json (rewritten after every section, so a run cut short keeps
what it measured) and prints a table.

Exit status: 0 when every correctness row and every dispatch row passed, 1 when any
failed (or the correctness section crashed), 2 without a GPU and without --interpret
(nothing measured).  Timings never fail the run; their errors are recorded per row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout's pallas_kernels

# Full-size benchmark model: 32 query heads over 8 kv heads, head_dim 128 (a typical 8B-class GQA layer).
BENCH_HEADS, BENCH_KV_HEADS, BENCH_HEAD_DIM = 32, 8, 128
BENCH_CACHE_LENS = (1024, 4096, 16384, 65536)
BENCH_BATCHES = (1, 8, 32, 128, 256)
RAGGED_BATCH = 32                      # one extra ragged-length run per cache length at this batch
IMPLS = ("pallas", "xla", "dpa_xla", "dpa_cudnn")
DISPATCH_HEAD_DIMS = (52, 56, 60, 64, 128)   # resolve_impl("auto", d, dtype) must pick the kernel on a GPU
ODD_HEAD_DIMS = (52, 56, 60)                 # checked end to end through decode_attention(impl="auto")


def _log(*a):
    print(*a, flush=True)


def _write(out_dir, results):
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "kernels.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1, default=str)
    os.replace(tmp, path)
    return path


def _time_fn(fn, args, *, min_time=0.05, max_iters=200, warmup=2):
    """Median-free steady-state time: dispatch N calls back to back, block once; seconds per call."""
    import jax
    out = None
    t0 = time.perf_counter()
    for _ in range(warmup):
        out = fn(*args)
    jax.block_until_ready(out)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    one = max(time.perf_counter() - t0, 1e-6)
    iters = int(min(max_iters, max(3, min_time / one)))
    samples = []
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(iters):
            out = fn(*args)
        jax.block_until_ready(out)
        samples.append((time.perf_counter() - t0) / iters)
    return statistics.median(samples), first


# ----------------------------------------------------------------------------- (a) correctness

def _compare(out, lse, out_r, lse_r, lengths, tol):
    """-> dict(ok, max_out_err, max_lse_err, empty_rows_ok): kernel output vs the reference."""
    import jax.numpy as jnp
    out, out_r = np.asarray(out.astype(jnp.float32)), np.asarray(out_r.astype(jnp.float32))
    lse, lse_r = np.asarray(lse), np.asarray(lse_r)
    nonempty = np.asarray(lengths) > 0
    err_out = float(np.max(np.abs(out - out_r) / (tol + np.abs(out_r))) * tol)
    err_lse = float(np.max(np.abs(lse[nonempty] - lse_r[nonempty]))) if nonempty.any() else 0.0
    empty_ok = bool(np.all(out[~nonempty] == 0) and np.all(np.isneginf(lse[~nonempty])))
    ok = bool(np.all(np.isfinite(out))
              and np.allclose(out, out_r, rtol=tol, atol=tol)
              and np.allclose(lse[nonempty], lse_r[nonempty], rtol=tol, atol=tol)
              and empty_ok)
    return dict(ok=ok, max_out_err=err_out, max_lse_err=err_lse, empty_rows_ok=empty_ok)


def check_correctness(interpret: bool):
    """-> rows: the Pallas GPU kernel (head dims 64/128) and decode_attention(impl="auto") (odd head
    dims) against the reference, one row per (path, dtype, head_dim, group, num_queries)."""
    import jax
    import jax.numpy as jnp

    from pallas_kernels.decode_attention_gpu import decode_attention_gpu
    from pallas_kernels.dispatch import decode_attention, resolve_impl
    from pallas_kernels.reference import decode_attention_reference

    rows = []
    cache_len = 100 if interpret else 1000
    lengths = [0, 1, 77, cache_len] if interpret else [0, 1, 777, cache_len]
    groups = (1, 8) if interpret else (1, 4, 8)
    queries = (1,) if interpret else (1, 3)
    kv_heads = 2
    cases = []
    for dtype in (jnp.bfloat16, jnp.float32):
        for d in (64, 128):
            for group in groups:
                for nq in queries:
                    cases.append(("kernel", dtype, d, group, nq))
    # Odd head dims through dispatch (whatever "auto" picks must be right); on CPU "auto" is XLA: one cheap row.
    odd = ODD_HEAD_DIMS if not interpret else ODD_HEAD_DIMS[:1]
    for dtype in ((jnp.bfloat16, jnp.float32) if not interpret else (jnp.float32,)):
        for d in odd:
            for group in ((1, 8) if not interpret else (1,)):
                cases.append(("auto", dtype, d, group, 1))
    for path, dtype, d, group, nq in cases:
        tol = 1e-2 if dtype == jnp.bfloat16 else 1e-5
        key = jax.random.PRNGKey(len(rows))
        kq, kk, kv = jax.random.split(key, 3)
        b = len(lengths)
        row = dict(path=path, dtype=jnp.dtype(dtype).name, head_dim=d, group=group, num_queries=nq,
                   kv_heads=kv_heads, cache_len=cache_len, lengths=lengths, tol=tol)
        try:
            q = jax.random.normal(kq, (b, nq, kv_heads * group, d), dtype)
            k = jax.random.normal(kk, (b, cache_len, kv_heads, d), dtype)
            v = jax.random.normal(kv, (b, cache_len, kv_heads, d), dtype)
            lens = jnp.asarray(lengths, jnp.int32)
            if path == "kernel":
                out, lse = decode_attention_gpu(q, k, v, lens, interpret=interpret)
            else:
                row["resolved"] = list(resolve_impl("auto", d, dtype))
                out, lse = decode_attention(q, k, v, lens, impl="auto")
            out_r, lse_r = decode_attention_reference(q, k, v, lens)
            row.update(_compare(out, lse, out_r, lse_r, lengths, tol))
        except Exception as e:  # record and keep going
            row.update(ok=False, error=f"{type(e).__name__}: {e}"[:2000])
        rows.append(row)
        via = f" (auto -> {row['resolved'][0]})" if "resolved" in row else ""
        _log(f"  correctness {path:6s} {row['dtype']:8s} d={d:3d} group={group} nq={nq}{via}: "
             f"{'ok' if row['ok'] else 'FAIL ' + row.get('error', '')[:200]}")
    return rows


def check_dispatch(on_gpu: bool):
    """-> rows: what resolve_impl("auto", d, dtype) picks; it must be the GPU kernel on a GPU
    (and the XLA path on a host without one, where only the script itself is being smoke-tested)."""
    import jax.numpy as jnp

    from pallas_kernels.dispatch import resolve_impl

    expected = "gpu" if on_gpu else "xla"
    rows = []
    for dtype in (jnp.bfloat16, jnp.float32):
        for d in DISPATCH_HEAD_DIMS:
            row = dict(head_dim=d, dtype=jnp.dtype(dtype).name, expected=expected)
            try:
                kind, interp = resolve_impl("auto", d, dtype)
                row.update(kind=kind, interpret=bool(interp), ok=kind == expected and not (on_gpu and interp))
            except Exception as e:
                row.update(ok=False, error=f"{type(e).__name__}: {e}"[:2000])
            rows.append(row)
            _log(f"  dispatch auto {row['dtype']:8s} d={d:3d}: {row.get('kind', row.get('error', '')[:200])}"
                 f"{'' if row['ok'] else '  FAIL (expected ' + expected + ')'}")
    return rows


# ----------------------------------------------------------------------------- (c) copy bandwidth

def copy_bandwidth(nbytes: int):
    import jax
    import jax.numpy as jnp
    n = nbytes // 4
    x = jax.jit(lambda: jnp.arange(n, dtype=jnp.float32))()
    copy = jax.jit(lambda a: jnp.copy(a) + 0.0)   # a fresh buffer: one read + one write pass
    t, _ = _time_fn(copy, (x,), min_time=0.2, max_iters=50)
    del x
    return {"bytes": 4 * n, "seconds": t, "GBps_read_plus_write": 2 * 4 * n / t / 1e9}


# ----------------------------------------------------------------------------- (b) timings

def _impl_fn(impl, interpret):
    import jax

    from pallas_kernels.decode_attention_gpu import decode_attention_gpu
    from pallas_kernels.reference import decode_attention_xla
    if impl == "pallas":
        return jax.jit(lambda q, k, v, n: decode_attention_gpu(q, k, v, n, interpret=interpret))
    if impl == "xla":
        return jax.jit(decode_attention_xla)
    mode = {"dpa_xla": "xla", "dpa_cudnn": "cudnn"}[impl]
    return jax.jit(lambda q, k, v, n: jax.nn.dot_product_attention(
        q, k, v, key_value_seq_lengths=n, implementation=mode))


def run_timings(cfg, copy_gbps, deadline, results, out_dir, interpret):
    import jax
    import jax.numpy as jnp
    h, kh, d = cfg["heads"], cfg["kv_heads"], cfg["head_dim"]
    dtype = jnp.bfloat16
    item = 2
    mem = None
    try:
        stats = jax.devices()[0].memory_stats() or {}
        mem = stats.get("bytes_limit")
    except Exception:
        pass
    fns = {impl: _impl_fn(impl, interpret) for impl in cfg["impls"]}
    rows = results["timings"]
    for s in cfg["cache_lens"]:
        for b in cfg["batches"]:
            kv_bytes = 2 * b * s * kh * d * item
            # XLA paths also hold f32 logits (b*h*s*4) and a masked V copy; kernel needs only the cache.
            need = {"pallas": kv_bytes * 1.05,
                    "xla": kv_bytes * 1.55 + b * h * s * 12,
                    "dpa_xla": kv_bytes * 1.55 + b * h * s * 12,
                    "dpa_cudnn": kv_bytes * 1.1}
            variants = [("full", None)]
            if b == min(RAGGED_BATCH, max(cfg["batches"])):
                variants.append(("ragged", None))
            if mem is not None and kv_bytes * 1.05 > mem:
                for impl in cfg["impls"]:
                    rows.append(dict(impl=impl, batch=b, cache_len=s, lengths="full", status="skipped: does not fit"))
                continue
            if time.time() > deadline:
                rows.append(dict(batch=b, cache_len=s, status="skipped: time budget"))
                continue
            key = jax.random.PRNGKey(b * 100003 + s)
            kq, kk, kv, kl = jax.random.split(key, 4)
            k = jax.jit(lambda key: jax.random.normal(key, (b, s, kh, d), dtype))(kk)
            v = jax.jit(lambda key: jax.random.normal(key, (b, s, kh, d), dtype))(kv)
            q = jax.random.normal(kq, (b, 1, h, d), dtype)
            for variant, _ in variants:
                if variant == "full":
                    lens = jnp.full((b,), s, jnp.int32)
                else:
                    lens = jax.random.randint(kl, (b,), s // 4, s + 1, jnp.int32)
                valid = int(np.asarray(lens).sum())
                useful = 2 * valid * kh * d * item + 2 * b * h * d * item   # valid K/V + q + out
                for impl in cfg["impls"]:
                    row = dict(impl=impl, batch=b, cache_len=s, lengths=variant, heads=h, kv_heads=kh,
                               head_dim=d, dtype="bfloat16", useful_bytes=useful)
                    if mem is not None and need[impl] > mem:
                        row["status"] = "skipped: does not fit"
                    elif time.time() > deadline:
                        row["status"] = "skipped: time budget"
                    else:
                        try:
                            t, first = _time_fn(fns[impl], (q, k, v, lens))
                            gbps = useful / t / 1e9
                            row.update(status="ok", seconds=t, first_call_s=first, GBps=gbps,
                                       frac_of_copy=gbps / copy_gbps if copy_gbps else None)
                        except Exception as e:
                            msg = f"{type(e).__name__}: {e}"
                            row["status"] = ("oom: " if "RESOURCE_EXHAUSTED" in msg or "out of memory" in msg.lower()
                                             else "error: ") + msg[:600]
                    rows.append(row)
                    shown = (f"{row['seconds'] * 1e6:10.1f} us {row['GBps']:8.1f} GB/s"
                             if row.get("status") == "ok" else row["status"][:80])
                    _log(f"  {impl:9s} b={b:4d} s={s:6d} {variant:6s} {shown}")
                _write(out_dir, results)
            del k, v, q


def print_table(results):
    rows = [r for r in results["timings"] if r.get("status") == "ok"]
    if not rows:
        return
    impls = [i for i in IMPLS if any(r["impl"] == i for r in rows)]
    keys = sorted({(r["cache_len"], r["batch"], r["lengths"]) for r in rows})
    copy = results.get("copy_bandwidth", {}).get("GBps_read_plus_write")
    _log("")
    _log(f"decode attention, bf16, heads {results['bench']['heads']}/{results['bench']['kv_heads']}, "
         f"head_dim {results['bench']['head_dim']}: time us (GB/s of valid K/V; copy bandwidth "
         f"{copy and round(copy)} GB/s)")
    header = f"{'cache':>7s} {'batch':>5s} {'len':>6s} | " + " | ".join(f"{i:>20s}" for i in impls)
    _log(header)
    _log("-" * len(header))
    for s, b, var in keys:
        cells = []
        for impl in impls:
            r = next((r for r in rows if (r["cache_len"], r["batch"], r["lengths"], r["impl"]) == (s, b, var, impl)),
                     None)
            cells.append(f"{r['seconds'] * 1e6:9.1f} ({r['GBps']:7.0f})" if r else f"{'-':>20s}")
        _log(f"{s:7d} {b:5d} {var:>6s} | " + " | ".join(cells))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="directory for kernels.json")
    parser.add_argument("--interpret", action="store_true",
                        help="tiny interpret-mode smoke (any host): exercises this script, measures nothing real")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="stop starting new timing runs after this many seconds (results kept)")
    parser.add_argument("--quick", action="store_true", help="fewer timing combos")
    args = parser.parse_args(argv)

    import jax
    backend = jax.default_backend()
    on_gpu = backend in ("gpu", "cuda", "rocm")
    if not on_gpu and not args.interpret:
        _log(f"no GPU: nothing measured (default backend is {backend!r}; "
             f"use --interpret for an interpret-mode smoke of this script)")
        return 2

    start = time.time()
    deadline = start + args.budget_s
    interpret = not on_gpu
    device = jax.devices()[0]
    results = {
        "mode": "interpret-smoke" if interpret else "gpu",
        "device": getattr(device, "device_kind", str(device)),
        "backend": backend,
        "jax": jax.__version__,
        "python": platform.python_version(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "timings": [],
    }
    if interpret:
        cfg = dict(heads=4, kv_heads=2, head_dim=64, cache_lens=(64, 256), batches=(1, 2),
                   impls=("pallas", "xla", "dpa_xla"))
        copy_bytes = 16 << 20
    else:
        cfg = dict(heads=BENCH_HEADS, kv_heads=BENCH_KV_HEADS, head_dim=BENCH_HEAD_DIM,
                   cache_lens=BENCH_CACHE_LENS, batches=BENCH_BATCHES, impls=IMPLS)
        if args.quick:
            cfg.update(cache_lens=(4096, 65536), batches=(1, 32, 256))
        copy_bytes = 8 << 30
    results["bench"] = {k: v for k, v in cfg.items()}
    global RAGGED_BATCH
    if interpret:
        RAGGED_BATCH = 2

    _log(f"[gpu_check] {results['mode']} on {results['device']} (jax {jax.__version__})")
    _log("(a) correctness vs reference")
    t0 = time.time()
    try:
        results["correctness"] = check_correctness(interpret)
    except Exception:
        results["correctness_error"] = traceback.format_exc()[-3000:]
    results["correctness_s"] = time.time() - t0
    passed = [r.get("ok") for r in results.get("correctness", [])]
    results["correctness_all_ok"] = bool(passed) and all(passed)
    _log("(a) dispatch: resolve_impl('auto', head_dim, dtype)")
    try:
        results["dispatch"] = check_dispatch(on_gpu)
    except Exception:
        results["dispatch_error"] = traceback.format_exc()[-3000:]
    dispatched = [r.get("ok") for r in results.get("dispatch", [])]
    results["dispatch_all_ok"] = bool(dispatched) and all(dispatched)
    results["ok"] = results["correctness_all_ok"] and results["dispatch_all_ok"]
    path = _write(args.out, results)

    _log("(c) device-to-device copy bandwidth")
    try:
        results["copy_bandwidth"] = copy_bandwidth(copy_bytes)
        _log(f"  copy: {results['copy_bandwidth']['GBps_read_plus_write']:.1f} GB/s (read + write)")
    except Exception:
        results["copy_bandwidth"] = {"error": traceback.format_exc()[-2000:]}
    _write(args.out, results)

    _log("(b) decode attention timings")
    copy_gbps = results["copy_bandwidth"].get("GBps_read_plus_write")
    try:
        run_timings(cfg, copy_gbps, deadline, results, args.out, interpret)
    except Exception:
        results["timings_error"] = traceback.format_exc()[-3000:]
    results["total_s"] = time.time() - start
    path = _write(args.out, results)
    print_table(results)
    results["failed"] = ([f"correctness {r.get('path')} {r['dtype']} d={r['head_dim']} group={r['group']} "
                          f"nq={r['num_queries']}" for r in results.get("correctness", []) if not r.get("ok")]
                         + [f"dispatch {r['dtype']} d={r['head_dim']}: {r.get('kind', 'error')} "
                            f"(expected {r['expected']})" for r in results.get("dispatch", []) if not r.get("ok")]
                         + [k for k in ("correctness_error", "dispatch_error") if k in results])
    path = _write(args.out, results)
    _log(f"\ncorrectness: {sum(bool(p) for p in passed)}/{len(passed)} ok; "
         f"dispatch: {sum(bool(p) for p in dispatched)}/{len(dispatched)} ok; wrote {path}")
    for line in results["failed"]:
        _log(f"FAILED: {line}")
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
