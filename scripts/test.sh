#!/usr/bin/env bash
# The README's test command: set up the environment, lint, then run the whole pytest suite.
# Test files are spread over worker processes (pytest-xdist, a whole file per worker so module
# fixtures are built once; in collection order, which tests/conftest.py starts with the files holding
# `slow` tests): one per core, at most 4; PHOTON_TEST_WORKERS=N overrides (0 or 1: one process).
# The 25 slowest tests are listed at the end, so a slow newcomer shows in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
bash scripts/setup_aot.sh  # .venv-aot: the TPU and CUDA compilers the deviceless AOT tests run (docs/aot.md)
.venv/bin/ruff check .  # lint first (pyproject.toml: pyflakes, pycodestyle at 120 columns, isort)
cores=$(nproc 2>/dev/null || echo 1)
workers=${PHOTON_TEST_WORKERS:-$(( cores < 4 ? cores : 4 ))}
parallel=()
if [ "$workers" -gt 1 ]; then parallel=(-n "$workers" --dist loadfile --no-loadscope-reorder); fi
exec .venv/bin/python -m pytest -q -p no:cacheprovider --durations=25 "${parallel[@]}" "$@"
