"""Sharded programs without waste: XLA's SPMD partitioner never falls back to replicating a tensor
("Involuntary full rematerialization") on any 8-device mesh, in the default (CPU bf16) and the float32
(plain dot_general, what GPUs and TPUs run) compute paths; the collectives of a compiled step are read
correctly from its HLO and compared with the analytic floor; `--target gpu` compiles the accelerator's
projections on CPU devices.

The shapes are tiny but trip the same causes as the 600M presets: with the code before this work, this
file's two-level PHOTON (width 64, 8 heads, batch 8) gave 25 / 1 / 27 rematerializations for the bf16
train step on (2,4,1) / (1,4,2) / (2,2,2) and 2 / 1 / 4 in float32, where photon-600m gave 27 / 1 / 30
and 4 / 1 / 7 (docs/scale-out.md); the two canaries below rebuild the causes. Every audit compiles
afresh (remat_log.fresh_compile): a program loaded from the persistent compilation cache, or from JAX's
in-memory cache, is not partitioned again and would log nothing (a third canary).
"""

import contextlib
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from conftest import tiny_overrides
from jax.experimental.compilation_cache import compilation_cache

from photon_jax.cli.main import main
from photon_jax.config import load_config
from photon_jax.model import photon, projection, vanilla
from photon_jax.model.accounting import count_params
from photon_jax.model.layers import dtype_of, logical_init
from photon_jax.runs.workdir import params_layout
from photon_jax.scaleout import analytic
from photon_jax.scaleout.collectives import collectives, group_size
from photon_jax.scaleout.programs import audit, lowered_programs
from photon_jax.scaleout.remat_log import compile_audited
from photon_jax.sharding import logical_rules, make_mesh

# XLA's CPU backend optimisations cost more than they save for these compiles; partitioning is unaffected.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True,
                "xla_cpu_use_fusion_emitters": False}
MESHES = [(8, 1, 1), (1, 8, 1), (1, 1, 8), (2, 4, 1), (4, 2, 1), (1, 4, 2), (2, 2, 2), (1, 2, 4)]
FAMILIES = {"block": (4,), "photon": (4, 4), "photon-3": (2, 2, 2), "vanilla": (4, 4)}


def spmd_config(family: str, dtype: str, mesh) -> object:
    """Tiny shapes every mesh axis divides: 8 heads, batch 8, width 64, one layer per stack."""
    over = tiny_overrides(chunks=FAMILIES[family], width=64, vocab=128) + [
        f"model.dtype={dtype}", "model.num_heads=8", "model.num_kv_heads=8", "train.batch_size=8",
        f"mesh.data={mesh[0]}", f"mesh.fsdp={mesh[1]}", f"mesh.tensor={mesh[2]}"]
    if family == "vanilla":
        over += ["model.family=vanilla", "model.num_layers=2"]
    return load_config(overrides=over)


def _no_remat(found: dict):
    described = {name: [r.describe() for r in remats] for name, remats in found.items() if remats}
    assert not described, json.dumps(described, indent=1)[:3000]


# ----------------------------------------------------------------------------- the matrix

@pytest.mark.slow  # 32 compiles: the file starts early so that no worker ends the suite on it alone
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("family", ["photon", "vanilla"])
def test_train_step_has_no_rematerialization_on_any_mesh(family, dtype):
    for mesh in MESHES:
        found = audit(spmd_config(family, dtype, mesh), ("train",), compiler_options=FAST_COMPILE)
        _no_remat({f"{mesh} train": found["train"]})


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("family", ["block", "photon", "photon-3", "vanilla"])
def test_train_eval_prefill_decode_have_no_rematerialization(family, dtype):
    """Every program a sharded run compiles, on the data x fsdp x tensor mesh that tripped the most."""
    programs = ("eval", "prefill", "decode") if family in ("photon", "vanilla") else ("train", "eval", "prefill",
                                                                                          "decode")
    _no_remat(audit(spmd_config(family, dtype, (2, 2, 2)), programs, compiler_options=FAST_COMPILE))


# ----------------------------------------------------------------------------- the causes, rebuilt

class _FlaxEmbed(nn.Module):
    """The lookup as flax's nn.Embed does it (what the models used before): straight from the table."""

    num_embeddings: int
    features: int
    dtype: object = None
    param_dtype: object = None

    def setup(self):
        init = logical_init(nn.initializers.normal(stddev=1.0), ("vocab", "embed"))
        self.embedding = self.param("embedding", init, (self.num_embeddings, self.features), self.param_dtype)

    def __call__(self, tokens_bt):
        return self.embedding.astype(self.dtype)[tokens_bt]


def _flax_embedding(m, width, name):
    return _FlaxEmbed(m.vocab_size, width, dtype=dtype_of(m.dtype), param_dtype=dtype_of(m.param_dtype), name=name)


def test_canary_lookup_from_an_fsdp_split_table_is_caught(monkeypatch):
    """Without TokenEmbed's gathered table, rows come out split along embed under FSDP and XLA replicates
    the chunker's input (what the issue saw at PhotonLM.chunk): the audit must see it."""
    cfg = spmd_config("photon", "float32", (2, 4, 1))
    assert not audit(cfg, ("train",), compiler_options=FAST_COMPILE)["train"]
    monkeypatch.setattr(photon, "token_embedding", _flax_embedding)
    monkeypatch.setattr(vanilla, "token_embedding", _flax_embedding)
    found = audit(cfg, ("train",), compiler_options=FAST_COMPILE)["train"]
    assert len(found) >= 2, [r.describe() for r in found]


def test_canary_cpu_projection_backward_with_forced_copies_under_a_mesh_is_caught(monkeypatch):
    """The one-device CPU bf16 backward forces its transposes into row-major copies by flattening them;
    under FSDP those copies are split along no axis and XLA replicates them (the issue's bf16 counts),
    sending more bytes than the plain transposes the mesh path takes."""
    cfg = spmd_config("photon", "bfloat16", (2, 4, 1))
    lowered = lowered_programs(cfg, ("train",))["train"]
    plain = collectives(lowered.compile(FAST_COMPILE).as_text(), 8)["total"]["wire_bytes"]
    monkeypatch.setattr(projection, "_one_device", lambda: True)
    found = audit(cfg, ("train",), compiler_options=FAST_COMPILE)["train"]
    assert len(found) >= 8 and all("transpose" in r.op_name for r in found if r.op_name)
    forced = collectives(lowered_programs(cfg, ("train",))["train"].compile(FAST_COMPILE).as_text(), 8)
    assert forced["total"]["wire_bytes"] > 1.3 * plain


@contextlib.contextmanager
def _persistent_cache(path):
    """The persistent compilation cache on, in `path`, for every program however fast it compiles; the
    suite's settings restored afterwards. JAX adds its GPU autotune-cache directory to the compile options
    only while the cache is on, which changes the cache key: that is off here, so a compile with the cache
    off (an audit) asks for the key a normal compile stored."""
    settings = {"jax_compilation_cache_dir": str(path), "jax_enable_compilation_cache": True,
                "jax_persistent_cache_min_compile_time_secs": 0, "jax_persistent_cache_min_entry_size_bytes": 0,
                "jax_persistent_cache_enable_xla_caches": None}
    saved = {name: getattr(jax.config, name) for name in settings}
    for name, value in settings.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()  # JAX reads these once per process: read them again
    try:
        yield
    finally:
        for name, value in saved.items():
            jax.config.update(name, value)
        compilation_cache.reset_cache()


def test_canary_audit_partitions_a_program_the_compilation_caches_hold(monkeypatch, tmp_path):
    """A program compiled normally with the persistent cache on is stored there and kept in memory; its
    audit must still run the partitioner and see the lookup's rematerializations, for a new lowering
    (persistent cache), for the same Lowered (JAX's in-memory cache of executables), and for a Lowered
    whose option-less compile() kept its executable."""
    monkeypatch.setattr(photon, "token_embedding", _flax_embedding)
    monkeypatch.setattr(vanilla, "token_embedding", _flax_embedding)
    cfg = spmd_config("photon", "float32", (2, 4, 1))
    with _persistent_cache(tmp_path):
        lowered = lowered_programs(cfg, ("train",))["train"]
        lowered.compile(FAST_COMPILE)
        stored = set(tmp_path.iterdir())
        assert len(stored) == 1
        found = audit(cfg, ("train",), compiler_options=FAST_COMPILE)["train"]
        assert len(found) >= 2, [r.describe() for r in found]
        found = compile_audited(lowered, FAST_COMPILE)[1]
        assert len(found) >= 2, [r.describe() for r in found]
        assert set(tmp_path.iterdir()) == stored  # the audits stored nothing
        # a Lowered compiled without options keeps that executable and returns it from its next such call
        again = lowered_programs(cfg, ("train",))["train"]
        again.compile()
        found = compile_audited(again)[1]
        assert len(found) >= 2, [r.describe() for r in found]
        stored = set(tmp_path.iterdir())
        # and after them the cache is on again: a new program is stored
        jax.jit(lambda x: x * 3).lower(jax.ShapeDtypeStruct((3,), jnp.float32)).compile()
        assert [p.name.split("-")[0] for p in set(tmp_path.iterdir()) - stored] == ["jit__lambda"]


# ----------------------------------------------------------------------------- collectives

HLO = "\n".join([
    'HloModule m',
    '',
    '%body (p: (s32[], f32[16,64])) -> (s32[], f32[16,64]) {',
    '  %p = (s32[], f32[16,64]) parameter(0)',
    '  %all-gather.1 = bf16[16,64]{1,0} all-gather(bf16[4,64]{1,0} %x), channel_id=1, '
    'replica_groups=[2,4]<=[8], dimensions={0}',
    '  %all-reduce.2 = f32[16,64]{1,0} all-reduce(f32[16,64]{1,0} %y), channel_id=2, '
    'replica_groups={{0,1},{2,3},{4,5},{6,7}}, to_apply=%add',
    '  ROOT %t = (s32[], f32[16,64]) tuple(%i, %all-reduce.2)',
    '}',
    '',
    '%cond (p: (s32[], f32[16,64])) -> pred[] {',
    '  ROOT %c = pred[] constant(true)',
    '}',
    '',
    'ENTRY %main (a: f32[16,64]) -> f32[16,64] {',
    '  %a = f32[16,64]{1,0} parameter(0)',
    '  %while.1 = (s32[], f32[16,64]) while(%init), condition=%cond, body=%body, '
    'backend_config={"known_trip_count":{"n":"3"}}',
    '  %reduce-scatter.3 = f32[2,64]{1,0} reduce-scatter(f32[16,64]{1,0} %a), '
    "replica_groups=mesh['data'=2,'fsdp'=4], device_ids=([8]) {'fsdp'}, dimensions={0}, "
    'to_apply=%add',
    '  ROOT %all-to-all.4 = f32[16,64]{1,0} all-to-all(f32[16,64]{1,0} %a), replica_groups={}, dimensions={0}',
    '}',
    '',
])


def test_collectives_count_loop_iterations_and_group_sizes():
    c = collectives(HLO, num_devices=8)
    assert c["all-gather"] == {"count": 3, "bytes": 3 * 16 * 64 * 2, "wire_bytes": 3 * 16 * 64 * 2 * 3 // 4}
    assert c["all-reduce"] == {"count": 3, "bytes": 3 * 16 * 64 * 4, "wire_bytes": 3 * 2 * 16 * 64 * 4 // 2}
    assert c["reduce-scatter"] == {"count": 1, "bytes": 2 * 64 * 4, "wire_bytes": 2 * 64 * 4 * 3}
    assert c["all-to-all"] == {"count": 1, "bytes": 16 * 64 * 4, "wire_bytes": 16 * 64 * 4 * 7 // 8}
    assert c["total"]["count"] == 8
    line = "x = f32[4] all-gather(f32[1] %y), replica_groups=[4,2]<=[2,4]T(1,0), dimensions={0}"
    assert group_size(line, 8) == 2


def test_data_parallel_gradient_all_reduce_matches_the_analytic_floor():
    """On (8,1,1) the only communication a step needs is one fp32 all-reduce of every gradient: the
    compiled step's all-reduce bytes equal the parameter bytes (plus a few scalars: loss, norms)."""
    cfg = spmd_config("vanilla", "float32", (8, 1, 1))
    lowered = lowered_programs(cfg, ("train",))["train"]
    compiled = lowered.compile(FAST_COMPILE)
    c = collectives(compiled.as_text(), 8)
    param_bytes = 4 * count_params(cfg.model)
    assert c["all-gather"]["count"] == 0
    assert param_bytes <= c["all-reduce"]["bytes"] <= param_bytes * 1.01
    floor = analytic.estimate(cfg, *_params_layout(cfg), ("data", "fsdp"))
    assert floor["all-reduce"]["bytes"] == param_bytes and floor["all-gather"]["bytes"] == 0
    assert floor["all-reduce"]["wire_bytes"] == pytest.approx(c["all-reduce"]["wire_bytes"], rel=0.01)


def _params_layout(cfg):
    mesh = make_mesh(cfg.mesh)
    layout = params_layout(cfg, mesh, logical_rules(cfg.mesh))
    return layout.abstract, layout.shardings, mesh


# ----------------------------------------------------------------------------- dry run, --target

def test_dry_run_reports_collectives_and_compiles_the_gpu_path(capsys):
    argv = ["train", "--dry-run", "--json", "--preset", "photon-tiny", "model.levels.0.encoder_layers=1",
            "model.levels.0.decoder_layers=1", "model.levels.1.encoder_layers=1", "model.levels.1.decoder_layers=1",
            "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2", "train.batch_size=8"]
    reports = {}
    for target in ("cpu", "gpu"):
        assert main(argv + ["--target", target]) == 0
        reports[target] = json.loads(capsys.readouterr().out)
    for target, report in reports.items():
        assert report["target"] == target and report["rematerializations"] == []
        comm = report["communication"]
        assert comm["compiled"]["all-gather"]["count"] > 0 and comm["compiled"]["all-reduce"]["count"] > 0
        assert comm["analytic"]["total"]["wire_bytes"] > 0 and comm["compiled_over_analytic"] >= 1.0
    assert "XLA path" in reports["gpu"]["target_note"] and reports["cpu"]["target_note"] is None
    # the CPU path keeps fp32 copies of its bf16 projections' inputs for the backward; the GPU path does not
    cpu_temps = reports["cpu"]["per_device_bytes"]["activations"]
    assert reports["gpu"]["per_device_bytes"]["activations"] != cpu_temps


def test_target_without_dry_run_is_refused(capsys):
    assert main(["train", "--target", "gpu", "--preset", "photon-tiny"]) == 2
    assert "--target needs --dry-run" in capsys.readouterr().err
