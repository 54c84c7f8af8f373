"""A wheel that installs: every source directory is a package, the wheel built from a copy of the sources
ships every file of them, and installed without -e it works from another directory: with `--target` it
finds the shipped presets and sweep grids (package data), and in a fresh venv its `photon-jax` console
script answers --help for every subcommand and trains, evaluates and generates from photon-tiny.

The wheel is built once per module (pip wheel --no-build-isolation --no-index: no network). The fresh
venv gets the pinned stack through a .pth file naming this interpreter's site-packages; a path a .pth
file adds is not scanned for .pth files itself, so the editable install there (its
__editable__*.pth installs a finder that maps photon_jax to the checkout, and would fill in any
subpackage the wheel lacks) never runs in it.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from photon_jax.config import GRID_DIR, PRESET_DIR
from photon_jax.data.preparation.corpus import shakespeare_files

REPO = Path(__file__).resolve().parent.parent
SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "LICENSE", "photon_jax", "pallas_kernels")
PACKAGES = ("photon_jax", "pallas_kernels")
# Data directories shipped as package_data (setup.cfg), not packages: lm-eval loads the task files here
# itself, local_data.py included (the tasks' `custom_dataset: !function local_data.<name>`, which lm-eval
# imports by file path from the YAML's directory, never as photon_jax.eval.local_tasks.local_data).
DATA_DIRS = {Path("photon_jax/eval/local_tasks")}
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
PROBE = """
import json, photon_jax
from photon_jax.config import list_presets, load_config
from photon_jax.cli.cmd_sweep import grid_names
print(json.dumps({"package": photon_jax.__file__, "presets": list_presets(), "grids": grid_names(),
                  "tiny_width": load_config(preset="photon-tiny").model.width}))
"""
# In the fresh venv: runs the installed console script file once per subcommand (`<cmd> --help`) in this one
# interpreter (one jax import instead of one per subcommand), then reports every project module loaded
# that does not come from the venv's site-packages.
HELPS = """
import contextlib, io, json, runpy, sys, sysconfig
import photon_jax.train.loop, photon_jax.runs.workdir
script, commands = sys.argv[1], sys.argv[2:]
helps = {}
for command in commands:
    out = io.StringIO()
    sys.argv = [script, command, "--help"]
    with contextlib.redirect_stdout(out):
        try:
            runpy.run_path(script, run_name="__main__")
            code = None
        except SystemExit as stop:
            code = stop.code
    helps[command] = {"code": code, "text": out.getvalue()}
site = sysconfig.get_paths()["purelib"]
foreign = sorted(name for name, module in sys.modules.items()
                 if name.split(".")[0] in ("photon_jax", "pallas_kernels")
                 and not (getattr(module, "__file__", None) or "").startswith(site))
print(json.dumps({"helps": helps, "foreign": foreign, "site": site, "package": photon_jax.__file__,
                  "finders": [repr(finder) for finder in sys.meta_path]}))
"""
STEPS = 2
NEW_TOKENS = 4
TINY = ["model.vocab_size=384", "model.width=32", "model.ffn_width=64", "model.dtype=float32",
        "model.levels=[{chunk: 4, encoder_layers: 1, decoder_layers: 1}]", "data.seq_len=32", "train.batch_size=8",
        f"train.steps={STEPS}", "train.warmup_steps=1", "train.eval_batches=1"]


def source_dirs(root: Path):
    """Every directory under the packages holding a Python module, relative to root."""
    return sorted({path.parent.relative_to(root) for package in PACKAGES for path in (root / package).rglob("*.py")
                   if "__pycache__" not in path.parts})


def test_every_source_directory_is_a_package():
    dirs = source_dirs(REPO)
    assert DATA_DIRS <= set(dirs)  # the exemption names a directory that still exists
    missing = [str(d) for d in dirs if d not in DATA_DIRS and not (REPO / d / "__init__.py").is_file()]
    assert not missing, f"no __init__.py (a non-editable install leaves these out): {missing}"
    assert not [d for d in DATA_DIRS if (REPO / d / "__init__.py").exists()]  # data, not a package


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """(the wheel, the source copy it was built from): a copy, so the build writes nothing into the checkout."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / name, src / name)
    build = subprocess.run([*PIP, "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                            "--wheel-dir", str(root / "dist"), str(src)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    (built,) = (root / "dist").glob("photon_jax-*.whl")
    return built, src


def test_the_wheel_ships_every_file_of_the_packages(wheel):
    built, src = wheel
    shipped = set(zipfile.ZipFile(built).namelist())
    sources = {path.relative_to(src).as_posix() for package in PACKAGES for path in (src / package).rglob("*")
               if path.is_file() and "__pycache__" not in path.parts}
    assert "photon_jax/cli/main.py" in sources and "photon_jax/eval/local_tasks/local_data.py" in sources
    assert not sorted(sources - shipped), f"missing from the wheel: {sorted(sources - shipped)}"


def test_non_editable_install_ships_presets_and_grids(wheel, tmp_path):
    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    install = subprocess.run([*PIP, "install", "-q", "--no-deps", "--no-index", "--target", str(site), str(wheel[0])],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site), JAX_PLATFORMS="cpu")

    def run(*argv):
        proc = subprocess.run([sys.executable, *argv], cwd=elsewhere, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout)

    found = run("-c", PROBE)
    assert Path(found["package"]).is_relative_to(site)  # the installed copy, not the checkout
    assert found["presets"] == sorted(p.stem for p in PRESET_DIR.glob("*.yaml")) and len(found["presets"]) >= 27
    assert found["grids"] == sorted(p.stem for p in GRID_DIR.glob("*.yaml")) and found["grids"]
    assert found["tiny_width"] == 128
    params = run("-m", "photon_jax.cli.main", "params", "--preset", "photon-600m", "--json")
    assert params["total_params"] == 646_399_104
    listed = run("-m", "photon_jax.cli.main", "sweep", found["grids"][0], "--list", "--json")
    assert listed and all(entry["steps"] > 0 for entry in listed)


@pytest.fixture(scope="module")
def fresh_venv(wheel, tmp_path_factory):
    """A new venv with the wheel installed (not -e) and this interpreter's site-packages reachable through a
    .pth file; its console script, an empty directory to run it from, and the environment to run it in."""
    root = tmp_path_factory.mktemp("fresh_venv")
    venv, elsewhere = root / "venv", root / "elsewhere"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run([*PIP, "--python", str(python), "install", "-q", "--no-deps", "--no-index",
                              str(wheel[0])], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    venv_site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    stack = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (Path(venv_site) / "pinned_stack.pth").write_text("".join(f"{path}\n" for path in stack))
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "XLA_FLAGS")}
    env.update(JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1")  # one CPU device, quick compiles
    return venv / "bin" / "photon-jax", elsewhere, env, Path(venv_site)


def run_in(fresh_venv, *argv):
    _, elsewhere, env, _ = fresh_venv
    proc = subprocess.run(list(argv), cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (argv, proc.stdout[-2000:], proc.stderr[-3000:])
    return proc.stdout


def test_the_fresh_venv_imports_the_wheel_and_every_help_works(fresh_venv, wheel):
    script, _, _, venv_site = fresh_venv
    commands = sorted(p.stem.removeprefix("cmd_") for p in (wheel[1] / "photon_jax" / "cli").glob("cmd_*.py"))
    assert {"train", "eval", "generate", "prepare"} <= set(commands)
    top = run_in(fresh_venv, str(script), "--help")
    assert top.startswith("usage: photon-jax") and all(f"    {c} " in top for c in commands), top
    found = json.loads(run_in(fresh_venv, str(script.parent / "python"), "-c", HELPS, str(script), *commands))
    assert Path(found["site"]) == venv_site and Path(found["package"]).is_relative_to(venv_site)
    assert not found["foreign"], f"project modules from outside the installed wheel: {found['foreign']}"
    assert not [f for f in found["finders"] if "editable" in f.lower()], found["finders"]
    for command, got in found["helps"].items():
        assert got["code"] in (0, None) and got["text"].startswith(f"usage: photon-jax {command}"), (command, got)


@pytest.mark.slow
def test_the_installed_console_script_trains_evaluates_and_generates(fresh_venv):
    script, elsewhere, _, _ = fresh_venv
    plays = elsewhere.parent / "plays"
    plays.mkdir()
    for path in shakespeare_files()[:4]:  # slices of four plays: a data dir prepared in a fraction of a second
        (plays / path.name).write_text(path.read_text(encoding="utf-8")[:6000], encoding="utf-8")
    workdir = elsewhere / "run"

    trained = json.loads(run_in(fresh_venv, str(script), "train", "--workdir", "run", "--quiet", "--json", *TINY,
                                f"data.corpus={plays}"))
    assert trained["step"] == STEPS and Path(trained["workdir"]) == workdir.resolve()
    assert (workdir / "checkpoints" / str(STEPS) / "commit_success.txt").is_file()

    evaluated = json.loads(run_in(fresh_venv, str(script), "eval", "--workdir", "run", "--max-batches", "1", "--json"))
    assert evaluated["run"]["step"] == STEPS
    # the same checkpoint and first validation batch as training's closing evaluation
    assert evaluated["validation"]["token_loss"] == pytest.approx(trained["validation"]["token_loss"], abs=1e-4)

    prompt = "ROMEO."
    generated = json.loads(run_in(fresh_venv, str(script), "generate", "--workdir", "run", "--prompt", prompt,
                                  "--max-new-tokens", str(NEW_TOKENS), "--json"))
    (sample,) = generated["samples"]
    assert generated["prompt"] == prompt and generated["prompt_tokens"] > 0
    assert sample["tokens"] == NEW_TOKENS if sample["finish"] == "length" else 1 <= sample["tokens"] <= NEW_TOKENS
