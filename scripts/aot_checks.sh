#!/usr/bin/env bash
# Deviceless AOT, the whole check (docs/aot.md): the Pallas kernels compiled by libtpu (v5e, v6e) and by
# XLA's CUDA plugin + ptxas (H100), then the pod-scale train-step plan,
# written under OUT (default experiments/results/aot; finished rows are kept, so a rerun resumes).
# Runs on a CPU box; sets up .venv-aot first. Exits non-zero when a kernel case fails to compile.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-experiments/results/aot}
bash scripts/setup_aot.sh
mkdir -p "$OUT"
export JAX_PLATFORMS=cpu
status=0
for topology in v5e:2x2 v6e:2x2 h100:1; do
    name=${topology//:/_}
    .venv-aot/bin/python -m photon_jax.scaleout.kernel_aot --topology "$topology" --json > "$OUT/kernels_$name.json" \
        || status=1
done
.venv-aot/bin/python -m photon_jax.scaleout.plan --out "$OUT" --doc docs/scale-out.md
exit $status
