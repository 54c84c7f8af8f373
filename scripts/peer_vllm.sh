#!/usr/bin/env bash
# Beside vLLM, from a fresh clone (docs/serving.md, "Beside vLLM"): vLLM's CPU engine and
# `photon-jax serve` driven by the same client (`vllm bench serve`), on the same weights, with equal
# KV bytes. Builds what it needs, then runs photon_jax/bench/peer_vllm.py:
#   1. .venv-vllm (scripts/setup_vllm.sh), unless there;
#   2. vanilla-tiny and photon-tiny trained 300 steps on the bundled plays (128-token sequences);
#   3. the vanilla run exported to Hugging Face format (what vLLM loads);
#   4. four servers, interleaved rounds, results under $OUT (JSON, Markdown table, PNG).
# Extra arguments go to peer_vllm.py (e.g. --rounds 3 --rates 2,8 --concurrency 32).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-experiments/results/bench/peer_vllm}
WORK=${WORK:-runs/peer}
STEPS=${STEPS:-300}
[ -x .venv/bin/photon-jax ] || bash scripts/setup_env.sh
[ -x .venv-vllm/bin/vllm-peer ] || bash scripts/setup_vllm.sh
for preset in vanilla-tiny photon-tiny; do
  [ -d "$WORK/$preset/checkpoints" ] || .venv/bin/photon-jax run --preset "$preset" --workdir "$WORK/$preset" \
      "train.steps=$STEPS"
done
[ -f "$WORK/vanilla-tiny-hf/config.json" ] || .venv/bin/photon-jax export --workdir "$WORK/vanilla-tiny" \
    --out "$WORK/vanilla-tiny-hf"
exec .venv/bin/python -m photon_jax.bench.peer_vllm --vanilla-run "$WORK/vanilla-tiny" \
    --photon-run "$WORK/photon-tiny" --export "$WORK/vanilla-tiny-hf" --vllm-bin .venv-vllm/bin/vllm-peer \
    --out "$OUT" --text-prompts "$@"
