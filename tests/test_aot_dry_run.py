"""`photon-jax train --dry-run --topology`: the train step compiled by the real TPU compiler (libtpu) and the
real CUDA compiler (XLA's GPU plugin + ptxas) on this CPU box, from .venv-aot (scripts/setup_aot.sh; the
README's test command builds it). What the accelerator compilers produce is read back: the Pallas kernels
inside the step, memory against the device, collectives, rematerializations, the roofline estimate; and a
step that does not fit is refused by the TPU compiler and reported as such."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from photon_jax.cli.main import main
from photon_jax.scaleout import collectives, hardware, plan, topology

REPO = Path(__file__).resolve().parents[1]
AOT_CLI = REPO / ".venv-aot" / "bin" / "photon-jax"


def aot_dry_run(tmp_path, topology_name: str, preset: str, *overrides: str) -> dict:
    assert AOT_CLI.exists(), f"{AOT_CLI} is missing: run bash scripts/setup_aot.sh (scripts/test.sh does)"
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    proc = subprocess.run([str(AOT_CLI), "train", "--dry-run", "--topology", topology_name, "--preset", preset,
                           "--json", *overrides], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_tpu_v5e_compiles_the_step_with_splash_attention_and_a_plan(tmp_path):
    # vanilla-tiny attends over 128 tokens: the splash kernel's tile, so the step holds its Mosaic calls
    report = aot_dry_run(tmp_path, "v5e:2x2", "vanilla-tiny")
    assert (report["platform"], report["device_kind"], report["devices"]) == ("tpu", "TPU v5 lite", 4)
    assert report["custom_calls"].get("tpu_custom_call", 0) >= 3  # forward, dq and dkv kernels
    assert report["fit"]["fits"] and report["fit"]["capacity_bytes"] == hardware.BY_NAME["v5e"].memory_bytes
    assert report["rematerializations"] == []
    assert report["communication"]["compiled"]["all-reduce"]["count"] >= 1  # data=4: the gradients
    roof = report["roofline"]
    assert roof["estimate"] and 0 < roof["mfu"] <= roof["mfu_overlapped"] <= 1
    assert roof["step_seconds"] >= roof["step_seconds_overlapped"] > 0


def test_h100_compiles_the_step_with_the_triton_flash_kernel(tmp_path):
    report = aot_dry_run(tmp_path, "h100:4", "photon-tiny")
    assert (report["platform"], report["devices"]) == ("gpu", 4)
    assert "H100" in report["device_kind"]
    # cuDNN cannot be traced without a GPU in the process: the Pallas Triton flash kernel stands in
    assert report["custom_calls"].get("__gpu$xla.gpu.triton", 0) >= 1
    assert report["fit"]["fits"] and report["fit"]["capacity_bytes"] == hardware.BY_NAME["h100"].memory_bytes
    assert report["rematerializations"] == []
    assert 0 < report["roofline"]["mfu"] <= 1


def test_a_step_that_does_not_fit_is_refused_by_the_tpu_compiler_and_reported(tmp_path):
    report = aot_dry_run(tmp_path, "v5e:2x2", "vanilla-tiny", "train.batch_size=65536")
    fit = report["fit"]
    assert not fit["fits"] and "RESOURCE_EXHAUSTED" in fit["compiler_error"]
    assert fit["peak_bytes"] > fit["capacity_bytes"] > 0


@pytest.mark.parametrize("argv, expected", [
    (["--dry-run", "--topology", "v7:2x2"], "unknown topology 'v7:2x2': use a TPU slice GEN:AxB[xC]"),
    (["--dry-run", "--topology", "h100:12"], "a GPU count must be 1-8 or a multiple of 8"),
    (["--topology", "v5e:2x2"], "--topology needs --dry-run"),
    (["--dry-run", "--topology", "v5e:2x2", "--target", "tpu"], "--topology and --target exclude each other"),
    # this process is .venv's: no accelerator compiler in it, by design
    (["--dry-run", "--topology", "v5e:2x2"], "the TPU compiler (libtpu) is not installed in this environment: "
                                             "install the compilers with bash scripts/setup_aot.sh"),
    (["--dry-run", "--topology", "h100:8"], "the CUDA compiler (jax-cuda12-plugin) is not installed"),
])
def test_bad_topology_use_is_one_line_and_exit_2(argv, expected, capsys):
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err


def test_a_loop_without_a_recorded_trip_count_counts_its_condition_bound():
    # the TPU compiler's HLO: no known_trip_count on the while; the condition compares the counter with N
    hlo = "\n".join([
        "%cond (p: (s32[], f32[8])) -> pred[] {",
        "  %constant.1 = s32[]{:T(128)} constant(6)",
        "  %gte = s32[]{:T(128)} get-tuple-element(%p), index=0",
        "  ROOT %lt = pred[]{:T(512)} compare(%gte, %constant.1), direction=LT",
        "}",
        "%body (p: (s32[], f32[8])) -> (s32[], f32[8]) {",
        "  %ar = f32[8]{0} all-reduce(%x), replica_groups={{0,1}}, to_apply=%add",
        "}",
        "ENTRY %main (a: f32[8]) -> f32[8] {",
        "  %w = (s32[], f32[8]) while(%t), condition=%cond, body=%body",
        "}",
    ])
    assert collectives.collectives(hlo, 2)["all-reduce"]["count"] == 6
    assert collectives.collectives(hlo.replace("direction=LT", "direction=NE"), 2)["all-reduce"]["count"] == 1


def test_device_kinds_map_to_their_figures_and_gpu_target_configs_name_them():
    assert hardware.facts_for_kind("TPU v5 lite").name == "v5e"
    assert hardware.facts_for_kind("TPU v5").name == "v5p"
    assert hardware.facts_for_kind("NVIDIA H100 80GB HBM3").name == "h100"
    assert hardware.facts_for_kind("cpu") is None
    config = topology.gpu_target_config("h100")
    assert "cuda_compute_capability { major: 9 minor: 0 }" in config
    assert f"device_memory_size: {hardware.BY_NAME['h100'].memory_bytes}" in config


def test_the_plan_table_lists_every_planned_row_and_says_which_are_not_compiled(tmp_path):
    assert plan.mesh_overrides("data=2,fsdp=4") == ["mesh.data=2", "mesh.fsdp=4", "mesh.tensor=1"]
    row = plan.ROWS[0]
    report = {"fit": {"fits": True, "peak_bytes": 3 * 2**30, "capacity_bytes": 80 * 10**9},
              "communication": {"compiled": {"total": {"wire_bytes": 2**30}}, "compiled_over_analytic": 0.5},
              "rematerializations": [],
              "roofline": {"step_seconds": 0.2, "step_seconds_overlapped": 0.1, "mfu": 0.3, "mfu_overlapped": 0.6}}
    done = {row.key("photon-600m"): {"key": row.key("photon-600m"), "command": row.command("photon-600m"),
                                     "model": "photon-600m", "topology": row.topology, "mesh": row.mesh,
                                     "report": report}}
    plan.write(tmp_path, done)
    lines = (tmp_path / "pod_plan.md").read_text().splitlines()[2:]
    assert len(lines) == len(plan.MODELS) * len(plan.ROWS)
    assert "| yes (3.0 / 74.5) | 1.00 (0.50x) | 0 | 0.10-0.20 | 30-60% |" in lines[0]
    assert sum("not compiled yet" in line for line in lines) == len(lines) - 1
    assert len(json.loads((tmp_path / "pod_plan.json").read_text())) == 1
    assert f"--mesh {row.mesh} train.batch_size=256" in lines[0]


def test_scale_out_doc_shows_the_committed_plan():
    table_md = (REPO / "experiments" / "results" / "aot" / "pod_plan.md").read_text()
    doc = (REPO / "docs" / "scale-out.md").read_text()
    assert plan.MARKERS[0] + table_md + plan.MARKERS[1] in doc
