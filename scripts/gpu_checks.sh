#!/usr/bin/env bash
# Every GPU check in one prepared run, sized for a short lease on one H200 (at most GPU_CHECKS_TOTAL_S,
# default 590 s, for all steps together):
#   install       wheels from .whl/ (scripts/fetch_gpu_wheels.sh) for the packages this Python lacks
#   probe         JAX must see a GPU (else: exit 2, nothing measured); which of our imports work
#   kernel_tests  pytest -m gpu tests/test_kernels.py on the GPU: fails if any test is skipped, fails
#                 or errors, or if none ran
#   gpu_check     python scripts/gpu_check.py: compiled kernel vs reference, dispatch's "auto"
#                 choice for head dims 52..128, kernel timings vs XLA and the device copy bandwidth
#   tpm_pf/tpm_de the paper's TPM protocol for the 600M presets, one regime per step
#   context       KV memory / decode speed vs context for the 600M presets
#   train         train step of photon-600m and vanilla-600m: tokens/s, MFU, step memory, fused attention
#   serve         `bench serve`: photon-600m (hiergen) vs vanilla-600m servers at one KV budget, a short
#                 open-loop load: slots, peak concurrency, output tokens/s, TTFT / ITL (needs the [serve] wheels)
# Each step has its own timeout; its output goes to $OUT/<step>.log, its result to $OUT/<step>.json
# (or the JSON the step itself writes), and $OUT/summary.json lists every step. The exit status is 0
# only when every step passed. Runs from a bare checkout: the repository and the installed wheels go
# on PYTHONPATH (photon-jax need not be installed).
#
#   OUT=dir bash scripts/gpu_checks.sh                                 # default OUT: gpu_results/
#   PHOTON_GPU_CHECKS_ALLOW_CPU=1 OUT=dir bash scripts/gpu_checks.sh  # no GPU: interpret-mode smoke of
#                                                                      # the script only, measures nothing
# Knobs: PYTHON (default: .venv/bin/python if present, else python3), GPU_CHECKS_TOTAL_S, WHEEL_DIR,
# GPU_SITE (where the wheels go, default /tmp/photon_gpu_site), TPM_ARGS (extra `bench tpm` flags).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
OUT=${OUT:-gpu_results}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || { echo "cannot create OUT=$OUT" >&2; exit 2; }
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x .venv/bin/python ]; then PY=$REPO/.venv/bin/python; else PY=python3; fi
TOTAL_S=${GPU_CHECKS_TOTAL_S:-590}
WHEELS=${WHEEL_DIR:-.whl}
SITE=${GPU_SITE:-/tmp/photon_gpu_site}
ALLOW_CPU=${PHOTON_GPU_CHECKS_ALLOW_CPU:-0}
T0=$(date +%s)
status=0
STEPS=()

# ------------------------------------------------------------------ helpers (stdlib Python only)
HELPER=$(mktemp /tmp/gpu_checks_helper.XXXXXX.py)
trap 'rm -f "$HELPER"' EXIT
cat > "$HELPER" <<'EOF'
import glob, json, os, re, subprocess, sys, time, zipfile

def norm(name):
    return re.sub(r"[-_.]+", "_", name).lower()

def install(wheel_dir, site, out_json):
    """Install into `site` only the wheels whose distribution this Python does not have at all, so that
    nothing already installed (jax, flax, their dependencies) is shadowed or replaced."""
    import importlib.metadata as md
    rows, todo = [], []
    py = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    for w in sorted(glob.glob(os.path.join(wheel_dir, "*.whl"))):
        parts = os.path.basename(w)[:-4].split("-")
        name, version, pytag, abitag = parts[0], parts[1], parts[-3], parts[-2]
        row = dict(wheel=os.path.basename(w), name=name, version=version)
        try:
            row.update(action="kept system", system_version=md.version(name))
        except md.PackageNotFoundError:
            if pytag.startswith("cp") and py not in pytag.split("."):
                row.update(action="incompatible", reason=f"wheel for {pytag}, this is {py}")
            else:
                row["action"] = "install"
                todo.append(w)
        rows.append(row)
    os.makedirs(site, exist_ok=True)
    method = None
    if todo:
        pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                              "--no-compile", "--disable-pip-version-check", "--target", site, *todo])
        method = "pip"
        if pip.returncode != 0:            # no pip here (or it refused): a wheel is a zip of the site tree
            method = "unzip"
            for w in todo:
                with zipfile.ZipFile(w) as z:
                    for m in z.namelist():
                        parts = m.split("/")
                        if parts[0].endswith(".data"):
                            if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                                continue
                            dest = os.path.join(site, *parts[2:])
                        else:
                            dest = os.path.join(site, *parts)
                        if m.endswith("/"):
                            continue
                        os.makedirs(os.path.dirname(dest), exist_ok=True)
                        with z.open(m) as src, open(dest, "wb") as dst:
                            dst.write(src.read())
                        if "/bin/" in m or m.endswith(".so") or ".so." in m:
                            os.chmod(dest, 0o755)
    for r in rows:
        if r["action"] == "install":
            r["action"] = "installed"
    # Requirements of the installed wheels that a kept system package may not meet (reported, not fixed:
    # replacing a system package could break jax/flax).
    sys.path.insert(0, site)
    warnings = []
    try:
        from packaging.requirements import Requirement
        import importlib
        importlib.invalidate_caches()
        for w in todo:
            with zipfile.ZipFile(w) as z:
                meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
                for line in z.read(meta).decode("utf-8", "replace").splitlines():
                    if not line.startswith("Requires-Dist:"):
                        continue
                    req = Requirement(line.split(":", 1)[1].strip())
                    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                        continue
                    try:
                        have = md.version(req.name)
                    except md.PackageNotFoundError:
                        warnings.append(f"{os.path.basename(w).split('-')[0]} needs {req}: not installed")
                        continue
                    if req.specifier and not req.specifier.contains(have, prereleases=True):
                        warnings.append(f"{os.path.basename(w).split('-')[0]} needs {req}: system has {have}")
    except Exception as e:
        warnings.append(f"requirement check skipped: {type(e).__name__}: {e}")
    for line in warnings:
        print("warning:", line)
    result = dict(python=sys.version.split()[0], site=site, method=method, wheels=rows, warnings=warnings,
                  installed=sum(r["action"] == "installed" for r in rows),
                  kept=sum(r["action"] == "kept system" for r in rows),
                  incompatible=sum(r["action"] == "incompatible" for r in rows))
    json.dump(result, open(out_json, "w"), indent=1)
    print(f"installed {result['installed']} wheels into {site} ({method}), kept {result['kept']} system "
          f"packages, {result['incompatible']} incompatible, {len(warnings)} warnings")
    return 0

def probe(out_json):
    rec = dict(python=sys.version.split()[0], executable=sys.executable)
    mods = {}
    for m in ("numpy", "flax", "optax", "orbax.checkpoint", "yaml", "pytest", "matplotlib", "tqdm",
              "tensorboardX", "grain", "sentencepiece", "hypothesis", "photon_jax", "pallas_kernels"):
        try:
            mod = __import__(m)
            mods[m] = getattr(mod, "__version__", "ok")
        except Exception as e:
            mods[m] = f"MISSING {type(e).__name__}: {e}"[:300]
    rec["imports"] = mods
    try:
        import jax
        rec.update(jax=jax.__version__, backend=jax.default_backend(),
                   devices=[getattr(d, "device_kind", str(d)) for d in jax.devices()])
    except Exception as e:
        rec.update(backend=None, error=f"{type(e).__name__}: {e}"[:2000])
    json.dump(rec, open(out_json, "w"), indent=1)
    missing = sorted(k for k, v in mods.items() if str(v).startswith("MISSING"))
    print(f"backend {rec.get('backend')}, devices {rec.get('devices')}, jax {rec.get('jax')}, "
          f"python {rec['python']}; missing imports: {', '.join(missing) or 'none'}")
    for m in missing:
        print(f"  {m}: {mods[m]}")
    return 0 if rec.get("backend") == "gpu" else 3

def junit(xml_path, out_json):
    """Counts of the junit xml; non-zero when a test failed, errored or was skipped, or none ran."""
    import xml.etree.ElementTree as ET
    res = dict(xml=xml_path, tests=0, skipped=0, failures=0, errors=0, cases=[])
    if not os.path.exists(xml_path):
        res["problem"] = "no junit xml (pytest did not finish)"
    else:
        root = ET.parse(xml_path).getroot()
        suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
        for s in suites:
            for k in ("tests", "skipped", "failures", "errors"):
                res[k] += int(s.get(k, 0))
            for c in s.iter("testcase"):
                outcome = next((ch.tag for ch in c if ch.tag in ("failure", "error", "skipped")), "passed")
                detail = next((ch.get("message", "") for ch in c if ch.tag in ("failure", "error", "skipped")), "")
                res["cases"].append(dict(name=f"{c.get('classname')}::{c.get('name')}", outcome=outcome,
                                         time=float(c.get("time", 0) or 0), message=detail[:500]))
        if res["tests"] == 0:
            res["problem"] = "no test ran (none selected by -m gpu?)"
        elif res["skipped"] or res["failures"] or res["errors"]:
            res["problem"] = "tests skipped, failed or errored"
    res["ok"] = "problem" not in res
    json.dump(res, open(out_json, "w"), indent=1)
    print(f"tests={res['tests']} skipped={res['skipped']} failures={res['failures']} errors={res['errors']}"
          + (f" ({res['problem']})" if "problem" in res else ""))
    for c in res["cases"]:
        if c["outcome"] != "passed":
            print(f"  {c['outcome']}: {c['name']}: {c['message'][:200]}")
    return 0 if res["ok"] else 1

def kernels(path):
    try:
        r = json.load(open(path))
    except Exception as e:
        print(f"no {os.path.basename(path)}: {type(e).__name__}")
        return 1
    c, d = r.get("correctness", []), r.get("dispatch", [])
    t = r.get("timings", [])
    bw = (r.get("copy_bandwidth") or {}).get("GBps_read_plus_write")
    want = d[0].get("expected", "?") if d else "?"
    print(f"correctness {sum(bool(x.get('ok')) for x in c)}/{len(c)}, dispatch auto->{want} "
          f"{sum(bool(x.get('ok')) for x in d)}/{len(d)}, timings {sum(x.get('status') == 'ok' for x in t)} ok "
          f"of {len(t)}, copy {bw and round(bw)} GB/s")
    return 0

def step(path, name, rc, seconds, timeout_s, detail, cmd):
    rc = int(rc)
    rec = dict(step=name, rc=rc, ok=rc == 0, seconds=float(seconds), timeout_s=float(timeout_s),
               timed_out=rc in (124, 137), detail=detail, command=cmd,
               finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    steps = json.load(open(path)) if os.path.exists(path) else []
    steps = [s for s in steps if s["step"] != name] + [rec]
    json.dump(steps, open(path, "w"), indent=1)
    return 0

if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    sys.exit({"install": install, "probe": probe, "junit": junit, "kernels": kernels, "step": step}[cmd](*args))
EOF
helper() { "$PY" "$HELPER" "$@"; }

now() { date +%s; }
remaining() { echo $(( TOTAL_S - ($(now) - T0) )); }

# step NAME TIMEOUT_S CMD...: run CMD under `timeout` (capped by what is left of TOTAL_S), log to
# $OUT/NAME.log (and the terminal), record rc/seconds in $OUT/summary.json, remember a summary line.
DETAIL=""
step() {
    local name=$1 limit=$2; shift 2
    local left; left=$(remaining)
    [ "$left" -lt "$limit" ] && limit=$left
    local rc t1 secs
    echo "== [$name] (timeout ${limit}s) $*"
    t1=$(now)
    if [ "$limit" -lt 10 ]; then
        echo "no time left for this step (GPU_CHECKS_TOTAL_S=$TOTAL_S)" | tee "$OUT/$name.log"
        rc=124
    else
        timeout -k 15 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
        rc=${PIPESTATUS[0]}
    fi
    secs=$(( $(now) - t1 ))
    [ "$rc" = 124 ] || [ "$rc" = 137 ] && echo "[$name] TIMED OUT after ${secs}s"
    LAST_RC=$rc LAST_SECS=$secs LAST_LIMIT=$limit
}
# finish NAME RC DETAIL: record the verdict of a step
finish() {
    local name=$1 rc=$2 detail=$3
    [ "$rc" = 0 ] || status=1
    helper step "$OUT/summary.json" "$name" "$rc" "$LAST_SECS" "$LAST_LIMIT" "$detail" "${CMDLINE:-}" >/dev/null
    STEPS+=("$(printf '%-13s %-5s %4ss  %s' "$name" "$([ "$rc" = 0 ] && echo ok || echo FAIL)" "$LAST_SECS" "$detail")")
}
summary() {
    echo
    echo "== summary ($OUT, $(( $(now) - T0 ))s of ${TOTAL_S}s)"
    for line in "${STEPS[@]}"; do echo "$line"; done
}
rm -f "$OUT/summary.json"

# ------------------------------------------------------------------ install
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G "$WHEELS/*.whl" > /dev/null; then
    rm -rf "$SITE"
    CMDLINE="install $WHEELS/*.whl -> $SITE"
    step install 90 "$PY" "$HELPER" install "$WHEELS" "$SITE" "$OUT/install.json"
    finish install "$LAST_RC" "$(grep '^installed' "$OUT/install.log" | tail -1)"
    export PYTHONPATH="$REPO:$SITE${PYTHONPATH#"$REPO"}"
else
    LAST_SECS=0 LAST_LIMIT=0
    echo "== [install] no $WHEELS/*.whl: using this Python's packages as they are"
    STEPS+=("$(printf '%-13s %-5s %4ss  %s' install skip 0 "no $WHEELS/ (run scripts/fetch_gpu_wheels.sh where PyPI is reachable)")")
fi

# ------------------------------------------------------------------ probe
CMDLINE="probe"
step probe 120 "$PY" "$HELPER" probe "$OUT/probe.json"
probe_rc=$LAST_RC
probe_line=$(grep '^backend' "$OUT/probe.log" | tail -1)
if [ "$probe_rc" != 0 ]; then
    [ -n "$probe_line" ] || probe_line="probe exited with status $probe_rc"
    if [ "$ALLOW_CPU" != 1 ] || [ "$probe_rc" != 3 ]; then
        finish probe 2 "NO GPU: $probe_line"
        echo
        echo "NO GPU: JAX's default backend is not 'gpu' ($probe_line)."
        echo "Nothing was measured; this script only passes on a machine with a GPU."
        echo "(PHOTON_GPU_CHECKS_ALLOW_CPU=1 runs an interpret-mode smoke of the script instead.)"
        summary
        exit 2
    fi
    finish probe 0 "no GPU, smoke mode: $probe_line"
    CMDLINE="gpu_check --interpret"
    step gpu_check 240 "$PY" scripts/gpu_check.py --interpret --out "$OUT" --budget-s 20
    rc=$LAST_RC
    finish gpu_check "$rc" "interpret smoke: $(helper kernels "$OUT/kernels.json")"
    for s in kernel_tests tpm_pf tpm_de context train serve; do
        STEPS+=("$(printf '%-13s %-5s %4ss  %s' "$s" skip 0 "needs a GPU")")
    done
    summary
    echo "SMOKE ONLY (no GPU): the script's plumbing ran; nothing was measured on a GPU."
    exit $status
fi
finish probe "$probe_rc" "$probe_line"

# ------------------------------------------------------------------ kernel tests on the GPU
CMDLINE="pytest -m gpu tests/test_kernels.py"
rm -f "$OUT/kernel_tests.xml"
step kernel_tests 150 env PHOTON_TEST_PLATFORM=gpu "$PY" -m pytest -m gpu tests/test_kernels.py -rs -p no:cacheprovider \
    --junitxml="$OUT/kernel_tests.xml"
pytest_rc=$LAST_RC
counts=$(helper junit "$OUT/kernel_tests.xml" "$OUT/kernel_tests.json")
junit_rc=$?
echo "$counts"
rc=$pytest_rc; [ "$rc" = 0 ] && rc=$junit_rc
finish kernel_tests "$rc" "$(echo "$counts" | head -1) (pytest rc $pytest_rc)"

# ------------------------------------------------------------------ kernels: correctness, dispatch, timings
CMDLINE="python scripts/gpu_check.py --quick --budget-s 110"
rm -f "$OUT/kernels.json"
step gpu_check 180 "$PY" scripts/gpu_check.py --out "$OUT" --quick --budget-s 110
rc=$LAST_RC
finish gpu_check "$rc" "$(helper kernels "$OUT/kernels.json") (rc $rc)"

# ------------------------------------------------------------------ TPM and context benches of the 600M presets
MODELS=photon-600m,block-600m,vanilla-600m
for regime in pf de; do
    CMDLINE="photon-jax bench tpm --regime $regime"
    rm -f "$OUT/tpm_600m_$regime.json"
    # shellcheck disable=SC2086
    step "tpm_$regime" 100 "$PY" -m photon_jax.cli.main bench tpm --models "$MODELS" --regime "$regime" \
        --repeats 1 --max-batch 256 --json-file "$OUT/tpm_600m_$regime.json" --plot "$OUT/tpm_600m_$regime.png" \
        ${TPM_ARGS:-}
    rc=$LAST_RC
    [ "$rc" = 0 ] && [ ! -s "$OUT/tpm_600m_$regime.json" ] && rc=1
    finish "tpm_$regime" "$rc" "$([ -s "$OUT/tpm_600m_$regime.json" ] && echo "wrote tpm_600m_$regime.json" || echo "no JSON") (rc $LAST_RC)"
done

CMDLINE="photon-jax bench context"
rm -f "$OUT/context_600m.json"
step context 70 "$PY" -m photon_jax.cli.main bench context --models "$MODELS" --repeats 1 \
    --json-file "$OUT/context_600m.json" --plot "$OUT/context_600m.png"
rc=$LAST_RC
[ "$rc" = 0 ] && [ ! -s "$OUT/context_600m.json" ] && rc=1
finish context "$rc" "$([ -s "$OUT/context_600m.json" ] && echo "wrote context_600m.json" || echo "no JSON") (rc $LAST_RC)"

# train step of the 600M presets: tokens/s, MFU vs the device's peak, step memory, fused attention, remat named
CMDLINE="photon-jax bench train"
rm -f "$OUT/train_600m.json"
step train 110 "$PY" -m photon_jax.cli.main bench train --models photon-600m,vanilla-600m --steps 3 --warmup 1 \
    --batch-size 8 --seq-len 2048 --devices 1 --json-file "$OUT/train_600m.json" model.dtype=bfloat16 model.remat=dots
rc=$LAST_RC
[ "$rc" = 0 ] && [ ! -s "$OUT/train_600m.json" ] && rc=1
finish train "$rc" "$([ -s "$OUT/train_600m.json" ] && echo "wrote train_600m.json" || echo "no JSON") (rc $LAST_RC)"

# serving the 600M presets (docs/serving.md, load benchmark): one server per model at the same KV budget,
# every program compiled at start-up (0.5 GiB of 256-token slots: 210 hiergen slots and 12 programs vs 19
# vanilla slots and 9 programs); 48 requests of 64 + 32 tokens offered at 16 req/s, at most 30 s
CMDLINE="photon-jax bench serve"
rm -f "$OUT/serve_600m.json"
step serve 150 "$PY" -m photon_jax.cli.main bench serve --models photon-600m,vanilla-600m --modes hiergen \
    --kv-budget-gib 0.5 --max-context 256 --rate 16 --requests 48 --prompt-len 64 --max-tokens 32 --duration 30 \
    --json-file "$OUT/serve_600m.json" --plot "$OUT/serve_600m.png"
rc=$LAST_RC
[ "$rc" = 0 ] && [ ! -s "$OUT/serve_600m.json" ] && rc=1
finish serve "$rc" "$([ -s "$OUT/serve_600m.json" ] && echo "wrote serve_600m.json" || echo "no JSON") (rc $LAST_RC)"

summary
[ "$status" = 0 ] && echo "ALL GPU CHECKS PASSED" || echo "SOME GPU CHECKS FAILED (see $OUT/*.log)"
exit $status
