"""`photon-jax params` through photon_jax.cli.main.main, and the installed console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from photon_jax.cli.main import main
from photon_jax.config import list_presets, load_config
from photon_jax.model import accounting as analysis


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, out, err, *words):
    assert code == 2, (code, out, err)
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {lines!r}"
    assert lines[0].startswith("photon-jax: error: ")
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"


def test_params_json_photon_600m(capsys):
    code, out, err = run_cli(capsys, "params", "--preset", "photon-600m", "--json")
    assert code == 0 and err == ""
    rep = json.loads(out)
    assert rep["total_params"] == 646_399_104
    assert rep["name"] == "photon-600m"
    assert sum(rep["breakdown"].values()) == rep["total_params"]
    assert rep["breakdown"]["chunker_1"] == 11_083_904
    assert rep["seq_len"] == 2048 and rep["kv_context"] == 2048
    assert set(rep["kv_bytes_per_sample"]) == {"hiergen", "recgen"}
    assert rep["kv_bytes_per_sample"]["recgen"] < rep["kv_bytes_per_sample"]["hiergen"]
    assert rep["train_flops_per_token"] > 0


@pytest.mark.parametrize("preset", ["photon-600m", "block-tiny", "vanilla-tiny"])
def test_params_text_lists_every_module(capsys, preset):
    code, out, err = run_cli(capsys, "params", "--preset", preset)
    assert code == 0 and err == ""
    cfg = load_config(preset=preset)
    breakdown = analysis.param_breakdown(cfg.model)
    total = sum(breakdown.values())
    assert out.splitlines()[0].startswith(f"{preset}: {total:,} parameters")
    lines = out.splitlines()
    for name, count in breakdown.items():
        assert any(line.split()[:2] == [name, f"{count:,}"] for line in lines), f"{name} {count:,} missing:\n{out}"
    assert "training FLOPs per token" in out
    for mode in analysis.modes_for(cfg.model):
        assert any(line.split()[:1] == [mode] for line in lines), f"KV mode {mode} missing"


def test_params_default_preset_and_overrides(capsys):
    code, out, err = run_cli(capsys, "params", "--json", "model.width=64")
    assert code == 0
    rep = json.loads(out)
    cfg = load_config(preset="photon-tiny", overrides=["model.width=64"])
    assert rep["total_params"] == analysis.count_params(cfg.model)
    assert rep["name"] == "photon-tiny"


def test_params_kv_bytes_and_context(capsys):
    _, out2, _ = run_cli(capsys, "params", "--preset", "photon-tiny", "--json", "--context", "256")
    _, out4, _ = run_cli(capsys, "params", "--preset", "photon-tiny", "--json", "--context", "256", "--kv-bytes", "4")
    rep2, rep4 = json.loads(out2), json.loads(out4)
    assert rep2["kv_context"] == 256
    for mode, nbytes in rep2["kv_bytes_per_sample"].items():
        assert rep4["kv_bytes_per_sample"][mode] == 2 * nbytes


def test_params_list(capsys):
    code, out, _ = run_cli(capsys, "params", "--list")
    assert code == 0 and out.split() == list_presets()


def test_params_yaml_config_file(capsys, tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("base: vanilla-tiny\nmodel:\n  num_layers: 3\n")
    code, out, _ = run_cli(capsys, "params", "--config", str(path), "--json")
    assert code == 0
    expected = analysis.count_params(load_config(path=str(path)).model)
    assert json.loads(out)["total_params"] == expected


BAD_ARGS = [
    (["params", "model.levels.0.chunk=3"], ["seq_len=128", "12"]),
    (["params", "model.num_heads=3"], ["num_heads=3"]),
    (["params", "model.foo=1"], ["unknown key", "model.foo"]),
    (["params", "--preset", "nope"], ["unknown preset 'nope'"]),
    (["params", "model.width=-4"], ["model.width", "-4"]),
    (["params", "model.levels=[]"], ["at least one level"]),
    (["params", "model.width=abc"], ["model.width", "integer"]),
    (["params", "--bogus"], ["--bogus"]),
    (["params", "--context", "abc"], ["--context"]),
    (["params", "--context", "-5"], ["--context"]),
    (["nocommand"], ["nocommand"]),
    ([], []),
]


@pytest.mark.parametrize("argv,words", BAD_ARGS, ids=[" ".join(a) or "empty" for a, _ in BAD_ARGS])
def test_bad_input_is_one_line_exit_2(capsys, argv, words):
    code, out, err = run_cli(capsys, *argv)
    assert_one_line_error(code, out, err, *words)


def test_bad_config_files(capsys, tmp_path):
    not_mapping = tmp_path / "list.yaml"
    not_mapping.write_text("- model\n- width\n")
    assert_one_line_error(*run_cli(capsys, "params", "--config", str(not_mapping)), "mapping")
    assert_one_line_error(*run_cli(capsys, "params", "--config", str(tmp_path / "missing.yaml")),
                          "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    assert_one_line_error(*run_cli(capsys, "params", "--config", str(broken)), "not valid YAML")
    assert_one_line_error(*run_cli(capsys, "params", "--config", str(broken), "--preset", "photon-tiny"), "not both")


def test_config_file_with_mixed_type_keys(capsys, tmp_path):
    """YAML keys need not be strings: two unknown keys `foo` and `3` must still be a one-line error."""
    weird_keys = tmp_path / "weird.yaml"
    weird_keys.write_text("foo: 1\n3: 4\n")
    assert_one_line_error(*run_cli(capsys, "params", "--config", str(weird_keys)), "unknown key")


def test_console_script_bad_preset():
    script = Path(sys.executable).parent / "photon-jax"
    assert script.is_file(), f"console script not installed at {script}"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([str(script), "params", "--preset", "nope"], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 2, proc
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert "unknown preset 'nope'" in lines[0]
    assert proc.stdout == ""
