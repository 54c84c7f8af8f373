"""A non-editable install (`pip install .`) run from another directory finds the shipped presets and
sweep grids (package data), and its CLI works on them."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from photon_jax.config import GRID_DIR, PRESET_DIR

REPO = Path(__file__).resolve().parent.parent
SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "photon_jax", "pallas_kernels")
PROBE = """
import json, photon_jax
from photon_jax.config import list_presets, load_config
from photon_jax.cli.cmd_sweep import grid_names
print(json.dumps({"package": photon_jax.__file__, "presets": list_presets(), "grids": grid_names(),
                  "tiny_width": load_config(preset="photon-tiny").model.width}))
"""


def test_non_editable_install_ships_presets_and_grids(tmp_path):
    src, site, elsewhere = tmp_path / "src", tmp_path / "site", tmp_path / "elsewhere"
    src.mkdir()
    for name in SOURCES:  # a copy, so the build writes nothing into the checkout
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / name, src / name)
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                              "--no-build-isolation", "--no-index", "--target", str(site), str(src)],
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
