"""The Pallas kernels compiled by the real accelerator compilers, deviceless (issue #40, docs/aot.md).

    python -m photon_jax.scaleout.kernel_aot --topology v5e:2x2 [--json] [--case NAME ...]

Each case is jit-lowered from abstract arguments on the topology's first device and compiled by libtpu
(Mosaic) or XLA's CUDA plugin (Triton, ptxas), through the same dispatch the model uses: decode attention
via pallas_kernels.dispatch with impl="pallas", training attention via the model's fused causal path
(splash on TPU, the Triton flash kernel on GPU), forward and jax.grad backward. The compiled text must
hold the kernel's custom call: a case that compiled but fell back to plain XLA code is a failure. Needs
.venv-aot (bash scripts/setup_aot.sh); jax runs on CPU only, the accelerators are described, never opened.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from pallas_kernels.common import compiling_on
from pallas_kernels.dispatch import decode_attention
from photon_jax.errors import UserError
from photon_jax.model.attention import fused_causal_attention
from photon_jax.scaleout import topology

# custom_call_target of a kernel launch in compiled HLO: Mosaic TPU; Triton (XLA's own, or jax's FFI
# fallback); Mosaic GPU
KERNEL_TARGETS = {"tpu": ("tpu_custom_call",),
                  "gpu": ("__gpu$xla.gpu.triton", "triton_kernel_call_ffi", "mosaic_gpu_v2")}
TARGET_RE = re.compile(r'custom_call_target="([^"]+)"')


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    kind: str              # "decode" | "train_fwd" | "train_grad" (jax.grad: the forward and backward kernels)
    head_dim: int
    heads: int = 32
    kv_heads: int = 8
    batch: int = 8
    length: int = 2048     # cache length (decode) or sequence length T (training)
    queries: int = 1       # decode queries per row (several: a shared prompt's rows stacked)
    window: bool = False   # decode: block-local windows [start, length) instead of [0, length)
    num_splits: int | None = None
    block: int = 0         # training: causal inside blocks of `block` positions (0: plain causal)
    dtype: str = "bfloat16"
    impl: str = "pallas"   # "xla": the control, which must show no kernel call
    platforms: tuple = ("tpu", "gpu")

    @property
    def kernel_calls_expected(self) -> int:
        """At least this many kernel launches (the control: exactly none). A gradient runs the forward
        kernel and the backward's (dq and dkv) kernels."""
        return 0 if self.impl == "xla" else 3 if self.kind == "train_grad" else 1


def _cases() -> tuple[Case, ...]:
    decode = [
        Case("decode_d52_mha", "decode", 52, kv_heads=32),  # photon-600m serving: 32 kv heads (TPU: 1664 lanes)
        *(Case(f"decode_d{d}_gqa", "decode", d) for d in (52, 56, 60, 64, 128)),  # 4 query heads per kv head
        Case("decode_d52_gqa_window_splits", "decode", 52, batch=1, num_splits=4, window=True),  # start > 0
        Case("decode_d52_shared_prefix", "decode", 52, batch=2, queries=16),  # a prompt group's rows stacked
        Case("decode_d128_f32", "decode", 128, dtype="float32"),  # fp32 dots at IEEE precision
        # Mosaic rejects float16 loads ("Invalid vector type for load", v4-v6e): on TPU the dispatch keeps
        # float16 caches on the XLA path (common.kernel_shape_problem), so the case is the GPU kernel's
        Case("decode_d64_f16", "decode", 64, dtype="float16", platforms=("gpu",)),
        Case("decode_d64_xla_control", "decode", 64, impl="xla"),
    ]
    # the paper's training shape (photon-600m: width 1664 = 32 heads x 52, T = 2048, no GQA), and head dim 64
    train = [Case(f"train_d{d}_{suffix}", f"train_{suffix}", d, kv_heads=32, batch=1) for d in (52, 64)
             for suffix in ("fwd", "grad")]
    train += [
        Case("train_d64_gqa_grad", "train_grad", 64, batch=1),
        Case("train_d64_f16_grad", "train_grad", 64, kv_heads=32, batch=1, dtype="float16"),
        # photon-600m's block-local lower encoder: 512 level-1 units, meta-contexts of 4 (splash's chunked-
        # causal mask; on GPU the dispatch folds such blocks into the batch and leaves them to XLA: too short)
        Case("train_d52_blocklocal_grad", "train_grad", 52, kv_heads=32, batch=1, length=512, block=4,
             platforms=("tpu",)),
    ]
    return tuple(decode + train)


CASES = _cases()


def _program(case: Case, sharding):
    """(fn, abstract args) of one case."""
    spec = lambda shape, dtype=case.dtype: jax.ShapeDtypeStruct(shape, jnp.dtype(dtype), sharding=sharding)  # noqa: E731
    b, t, h, kh, d = case.batch, case.length, case.heads, case.kv_heads, case.head_dim
    if case.kind == "decode":
        q_bqhd, k_bskd, v_bskd = spec((b, case.queries, h, d)), spec((b, t, kh, d)), spec((b, t, kh, d))
        lengths_b = spec((b,), "int32")
        kernel_kw = {} if case.num_splits is None else {"num_splits": case.num_splits}

        def fn(q_bqhd, k_bskd, v_bskd, lengths_b, starts_b=None):
            return decode_attention(q_bqhd, k_bskd, v_bskd, lengths_b, starts_b, impl=case.impl, **kernel_kw)

        return fn, (q_bqhd, k_bskd, v_bskd, lengths_b) + ((spec((b,), "int32"),) if case.window else ())

    args = (spec((b, t, h, d)), spec((b, t, kh, d)), spec((b, t, kh, d)))
    forward = lambda q, k, v: fused_causal_attention(q, k, v, case.block)  # noqa: E731
    if case.kind == "train_fwd":
        return forward, args
    loss = lambda q, k, v: forward(q, k, v).astype(jnp.float32).sum()  # noqa: E731
    return jax.grad(loss, argnums=(0, 1, 2)), args


def compile_case(case: Case, device, platform: str) -> dict:
    mesh = jax.sharding.Mesh(np.array([device]), ("x",))
    expected = case.kernel_calls_expected
    result = {"name": case.name, "ok": False, "seconds": 0.0, "custom_calls": [], "kernel_calls": 0,
              "kernel_calls_expected": expected}
    start = time.perf_counter()
    try:
        fn, args = _program(case, NamedSharding(mesh, P()))
        # compiling_on: the dispatch picks this platform's kernels, compiled, not interpreted; set_mesh: Mosaic
        # asks the mesh's device for its TPU generation (the default device is a CPU)
        with compiling_on(platform), jax.set_mesh(mesh):
            text = jax.jit(fn).lower(*args).compile().as_text()
    except Exception as e:  # noqa: BLE001 - reported per case: the compiler's own message
        result["error"] = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
    else:
        targets = TARGET_RE.findall(text)
        result["custom_calls"] = sorted(set(targets))
        result["kernel_calls"] = sum(t in KERNEL_TARGETS[platform] for t in targets)
        count = result["kernel_calls"]
        result["ok"] = count >= expected if expected else count == 0
        if not result["ok"]:
            result["error"] = (f"{count} kernel custom calls, expected at least {expected} (an XLA fallback)"
                               if expected else f"the XLA control holds {count} kernel custom calls")
    result["seconds"] = round(time.perf_counter() - start, 2)
    return result


def compile_kernels(topology_name: str, cases=None) -> list[dict]:
    """Compile each case (default: every case for the topology's platform) for the topology's first device;
    one result dict per case (see compile_case). topology.use_cpu_backend() must have run before jax started."""
    topo = topology.devices_for(topology_name)
    if cases is None:
        cases = [c for c in CASES if topo.platform in c.platforms]
    return [compile_case(case, topo.devices[0], topo.platform) for case in cases]


def _table(topology_name: str, results: list[dict]) -> str:
    lines = [f"{topology_name}: {sum(r['ok'] for r in results)}/{len(results)} cases ok, "
             f"{sum(r['seconds'] for r in results):.1f} s of compiles",
             f"{'case':34s} {'ok':3s} {'s':>6s} {'kernels':>7s}  custom calls / error"]
    for r in results:
        detail = r.get("error") or ", ".join(r["custom_calls"])
        ok = "yes" if r["ok"] else "NO"
        lines.append(f"{r['name']:34s} {ok:3s} {r['seconds']:6.2f} {r['kernel_calls']:7d}  {detail}")
    return "\n".join(lines)


def main(argv=None) -> int:
    topology.use_cpu_backend()  # before anything starts a backend: the accelerator is described, not opened
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topology", required=True, help=topology.VALID_FORMS)
    parser.add_argument("--json", action="store_true", help="one JSON list of per-case results")
    parser.add_argument("--case", action="append", choices=[c.name for c in CASES], help="only these cases")
    args = parser.parse_args(argv)
    cases = [c for c in CASES if c.name in args.case] if args.case else None
    try:
        results = compile_kernels(args.topology, cases)
    except UserError as e:
        print(f"kernel_aot: {e}", file=sys.stderr)
        return 2
    print(json.dumps(results, indent=1) if args.json else _table(args.topology, results))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
