#!/usr/bin/env bash
# Create .venv-aot: the real accelerator compilers (libtpu for TPU, the XLA CUDA plugin + ptxas for
# NVIDIA GPUs) for deviceless ahead-of-time compilation on a CPU box (docs/aot.md). It shares .venv's
# pinned stack through a .pth line (run scripts/setup_env.sh first) and adds only the setup.cfg extras
# tpu-aot and gpu-aot (about 430 MB), so .venv itself never loads an accelerator plugin.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || { echo "setup_aot.sh: .venv is missing: run bash scripts/setup_env.sh first" >&2; exit 2; }
if [ ! -x .venv-aot/bin/python ]; then
    .venv/bin/python -m venv --without-pip .venv-aot
    # .venv's site-packages (the pinned stack and the editable photon-jax) after .venv-aot's own
    .venv/bin/python -c "import site; print(site.getsitepackages()[0])" \
        > "$(.venv-aot/bin/python -c 'import site; print(site.getsitepackages()[0])')/photon_stack.pth"
fi
.venv-aot/bin/python -m pip install -q --disable-pip-version-check -e ".[tpu-aot,gpu-aot]"
