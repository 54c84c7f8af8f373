#!/usr/bin/env bash
# Download, on a machine with PyPI access, the wheels that scripts/gpu_checks.sh installs on a lent GPU
# machine without network. That machine has its own CPython 3.12 with jax, jaxlib (+ the CUDA plugin), flax,
# optax, orbax-checkpoint and numpy (and so their dependencies: absl-py, etils, protobuf, pyyaml, rich, ...);
# everything else photon-jax and its tests import may be missing, so it is fetched here:
#   runtime: grain (+ array-record, cloudpickle, portpicker), sentencepiece, tensorboardX, tqdm, pyyaml,
#            matplotlib (+ contourpy, cycler, fonttools, kiwisolver, pillow, pyparsing, python-dateutil,
#            tzdata, packaging) -- the bench plots of gpu_checks.sh need matplotlib
#   tests:   pytest (+ iniconfig, pluggy, pygments), hypothesis (+ sortedcontainers)
#   serve:   the [serve] extra for `bench serve`: fastapi (+ starlette, pydantic, pydantic-core, annotated-types,
#            annotated-doc, typing-inspection, typing-extensions, opentelemetry-api, anyio, idna), uvicorn (+ click,
#            h11), sse-starlette, prometheus-client; httpx (+ httpcore, certifi), the load client
# Left out: the notebook test's extras (nbclient, nbformat, ipykernel: gpu_checks.sh does not run that test)
# and photon-jax itself (gpu_checks.sh runs from the repository root with the repository on PYTHONPATH).
#
# One pinned version of each (the versions this repository is tested with; they satisfy setup.cfg), for
# CPython 3.12 manylinux x86_64; pure-Python wheels match any platform. The folder is replaced as a whole,
# so it never holds two versions of a package.
#
#   bash scripts/fetch_gpu_wheels.sh            # -> .whl/ (git-ignored), prints the total size
#   WHEEL_DIR=dir GPU_PYTHON_VERSION=3.12 bash scripts/fetch_gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${WHEEL_DIR:-.whl}
PYVER=${GPU_PYTHON_VERSION:-3.12}
LIMIT_MB=${WHEEL_LIMIT_MB:-60}          # the lent machine receives at most 64 MiB of untracked files
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python

PKGS=(
    # runtime (setup.cfg install_requires) and what they pull beyond jax/flax/optax/orbax
    grain==0.2.18 array-record==0.8.6 cloudpickle==3.1.3 portpicker==1.6.0
    sentencepiece==0.2.3
    tensorboardX==2.6.5
    tqdm==4.70.1
    pyyaml==6.0.4
    matplotlib==3.11.2 contourpy==1.3.3 cycler==0.12.1 fonttools==4.68.0 kiwisolver==1.5.1 pillow==13.0.0
    pyparsing==3.3.3 python-dateutil==4.0.0 tzdata==2026.6 packaging==26.4
    # tests (setup.cfg [test] extra, without the notebook packages)
    pytest==9.2.0 iniconfig==2.3.1 pluggy==1.7.0 pygments==2.21.0
    hypothesis==6.170.17 sortedcontainers==2.4.0
    # serve (setup.cfg [serve] extra) and what `pip install -e .[serve]` pulls with it; httpx for bench serve
    fastapi==0.163.2 starlette==1.10.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
    annotated-doc==0.0.7 typing-inspection==0.4.5 typing-extensions==4.16.0 opentelemetry-api==1.45.2
    anyio==4.16.0 idna==3.21 uvicorn==0.54.0 click==8.5.1 h11==0.16.0 sse-starlette==3.7.1
    prometheus-client==0.26.0 httpx==0.28.1 httpcore==1.0.9 certifi==2026.10.19.post1
)

tmp="$DEST.tmp.$$"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp"
"$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$tmp" "${PKGS[@]}"

# exactly one wheel per requested package
"$PY" - "$tmp" "${PKGS[@]}" <<'EOF'
import os, re, sys
folder, pkgs = sys.argv[1], sys.argv[2:]
norm = lambda n: re.sub(r"[-_.]+", "_", n).lower()
have = {}
for f in os.listdir(folder):
    if not f.endswith(".whl"):
        sys.exit(f"unexpected file {f}")
    have.setdefault(norm(f.split("-")[0]), []).append(f)
want = {norm(p.split("==")[0]) for p in pkgs}
bad = [f"{n}: {have.get(n)}" for n in sorted(want | set(have)) if len(have.get(n, [])) != 1 or n not in want]
if bad:
    sys.exit("not exactly one wheel per package:\n  " + "\n  ".join(bad))
EOF

rm -rf "$DEST"
mv "$tmp" "$DEST"
trap - EXIT
ls -1 "$DEST"
bytes=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
mb=$(( (bytes + 1048575) / 1048576 ))
echo "$(ls "$DEST"/*.whl | wc -l) wheels, ${mb} MiB in $DEST/"
if [ "$mb" -ge "$LIMIT_MB" ]; then
    echo "too big: ${mb} MiB >= ${LIMIT_MB} MiB (drop what the GPU checks do not need)" >&2
    exit 1
fi
