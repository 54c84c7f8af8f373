"""The whole rematerialization matrix, outside the test suite: every family (Block, PHOTON L=2 and L=3,
vanilla) x program (train, eval, prefill, decode) x 8-device mesh x compute path (bf16, float32), at
tests/test_spmd.py's tiny shapes, compiled afresh with XLA's warnings caught (docs/scale-out.md).

    python scripts/spmd_matrix.py [--out experiments/results/bench/spmd_matrix.json]

Exits 1 when any program rematerializes. About 256 compiles: 10-20 minutes on 2 cores.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_spmd import FAMILIES, FAST_COMPILE, MESHES, spmd_config  # noqa: E402

from photon_jax.scaleout.programs import PROGRAMS, audit  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="experiments/results/bench/spmd_matrix.json")
    args = parser.parse_args()
    rows, start = [], time.perf_counter()
    for family in FAMILIES:
        for dtype in ("bfloat16", "float32"):
            for mesh in MESHES:
                t0 = time.perf_counter()
                found = audit(spmd_config(family, dtype, mesh), PROGRAMS, compiler_options=FAST_COMPILE)
                row = {"family": family, "dtype": dtype, "mesh": list(mesh),
                       "rematerializations": {k: [r.describe() for r in v] for k, v in found.items()},
                       "seconds": round(time.perf_counter() - t0, 1)}
                rows.append(row)
                counts = {k: len(v) for k, v in row["rematerializations"].items()}
                print(f"{family:<9} {dtype:<9} {mesh}: {counts} ({row['seconds']} s)", flush=True)
    total = sum(len(v) for row in rows for v in row["rematerializations"].values())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"programs": list(PROGRAMS), "meshes": [list(m) for m in MESHES],
                                          "total_rematerializations": total, "compiles": len(rows) * len(PROGRAMS),
                                          "seconds": round(time.perf_counter() - start), "rows": rows}, indent=1))
    print(f"{total} involuntary rematerializations in {len(rows) * len(PROGRAMS)} compiled programs -> {args.out}")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
