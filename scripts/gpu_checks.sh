#!/usr/bin/env bash
# Every GPU check in one prepared run (for a short lease on an H200): compiled kernel tests,
# kernel timings vs XLA, and the paper's TPM protocol for the 600M presets in both regimes.
# Writes JSON (and PNGs) under $OUT (default: gpu_results/). Usage: OUT=dir bash scripts/gpu_checks.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_results}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
status=0
run() { echo "== $*"; "$@" || status=1; }
run "$PY" -m pytest -q -m "gpu" tests/test_kernels.py --junitxml="$OUT/kernel_tests.xml"
run "$PY" -m pallas_kernels.gpu_check --out "$OUT" --budget-s 180
run "$PY" -m photon_jax.cli.main bench tpm --models photon-600m,block-600m,vanilla-600m --regime both \
    --repeats 2 --max-batch 256 --json-file "$OUT/tpm_600m.json" --plot "$OUT/tpm_600m.png"
run "$PY" -m photon_jax.cli.main bench context --models photon-600m,block-600m,vanilla-600m \
    --json-file "$OUT/context_600m.json" --plot "$OUT/context_600m.png"
exit $status
