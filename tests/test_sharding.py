"""Sharding: the rules table covers every logical axis, the same training run gives the same losses on
every mesh, the dry run compiles without state, a golden file pins photon-600m's partition specs,
and bad meshes / rules are refused with one line and exit status 2.

Regenerate the golden file after an intended sharding change with
    PHOTON_REGEN_GOLDEN=1 pytest tests/test_sharding.py -k golden
"""

import dataclasses
import json
import math
import os
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import pytest
from conftest import prepare_few_plays, tiny_config, tiny_overrides

from photon_jax.cli.main import main
from photon_jax.config import MeshConfig, load_config
from photon_jax.data.loading import pipeline
from photon_jax.generation import CACHE_AXES
from photon_jax.scaleout.dry_run import describe_dry_run, dry_run
from photon_jax.sharding import batch_sharding, describe_mesh, logical_names, logical_rules, make_mesh, mesh_shape
from photon_jax.train.state import learning_rate_schedule, make_optimizer, state_layout
from photon_jax.train.step import train_step_program

GOLDEN = Path(__file__).parent / "golden" / "photon-600m_partition_specs.json"
VOCAB = 384  # the smallest sentencepiece vocabulary three plays allow
# Tests compile many small programs; XLA's CPU backend optimisations cost more than they save here.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True,
                "xla_cpu_use_fusion_emitters": False}  # about 3x faster to compile the tiny train step
MESHES = [(1, 1, 1), (8, 1, 1), (2, 2, 2), (1, 4, 2)]
ACTIVATION_AXES = ("batch", "length", "embed", "mlp")  # what model code passes to with_logical_constraint


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """Three real plays, tokenized with a small vocabulary (prepared in about a second)."""
    return prepare_few_plays(tmp_path_factory.mktemp("scale"), VOCAB)


def _cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip().splitlines()


# ----------------------------------------------------------------------------- rules table

@pytest.mark.parametrize("family", ["photon", "vanilla"])
def test_rules_cover_params_optimizer_activations_and_caches(family):
    cfg = tiny_config(family)
    mesh = make_mesh(MeshConfig(data=1, fsdp=4, tensor=2))
    rules = logical_rules(cfg.mesh)
    known = {name for name, _ in rules}
    layout = state_layout(cfg, make_optimizer(cfg), mesh, rules)  # raises if a logical axis had no rule
    used = logical_names(layout.logical_specs)
    assert {"embed", "mlp", "heads", "kv_heads", "head_dim", "layers"} <= used
    assert used | set(CACHE_AXES) | set(ACTIVATION_AXES) <= known
    # optimizer moments are sharded exactly like the parameters they follow
    mu = layout.shardings["opt_state"][1][0].mu
    assert jax.tree.leaves(mu) == jax.tree.leaves(layout.shardings["params"])
    # and a KV cache spec maps through the same table
    spec = nn.logical_to_mesh_axes(CACHE_AXES, rules)
    assert tuple(spec) == (None, ("data", "fsdp"), None, "tensor", None)


def test_mesh_shape_fill_and_mismatch():
    assert mesh_shape(MeshConfig(data=-1, fsdp=2, tensor=2), 8) == (2, 2, 2)
    assert mesh_shape(MeshConfig(data=1, fsdp=-1, tensor=2), 8) == (1, 4, 2)
    mesh = make_mesh(MeshConfig(data=1, fsdp=4, tensor=2))
    assert describe_mesh(mesh) == "data=1,fsdp=4,tensor=2"
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


# ----------------------------------------------------------------------------- same run, every mesh

def _initial_state(abstract):
    """A mesh-independent start: random matrices, unit norm scales, zero vectors and optimizer moments
    (zero moments and count are exactly AdamW's initial state)."""
    rng = np.random.default_rng(0)

    def leaf(path, a):
        if a.ndim >= 2:
            return (rng.standard_normal(a.shape) * 0.1).astype(a.dtype)
        if "scale" in jax.tree_util.keystr(path):
            return np.ones(a.shape, a.dtype)
        return np.zeros(a.shape, a.dtype)

    state = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract)
    state["params"] = jax.tree_util.tree_map_with_path(leaf, abstract["params"])
    return state


def _run_on_mesh(cfg, shape, host_state, batches):
    mesh_cfg = MeshConfig(data=shape[0], fsdp=shape[1], tensor=shape[2])
    cfg = dataclasses.replace(cfg, mesh=mesh_cfg)
    mesh = make_mesh(mesh_cfg, jax.devices()[: math.prod(shape)])
    rules = logical_rules(mesh_cfg)
    tx, schedule = make_optimizer(cfg), learning_rate_schedule(cfg)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):  # as the training loop runs it
        layout = state_layout(cfg, tx, mesh, rules)
        in_sharding = batch_sharding(mesh, rules)
        step_fn, abstract = train_step_program(cfg, tx, schedule, layout, in_sharding)
        lowered = step_fn.lower(*abstract)
        constraints = lowered.as_text().count("sharding_constraint")
        compiled = lowered.compile(compiler_options=FAST_COMPILE)
        state = jax.device_put(host_state, layout.shardings)
        losses = []
        for batch in batches:
            state, metrics = compiled(state, jax.device_put(batch, in_sharding))
            losses.append((float(metrics["loss"]), float(metrics["grad_norm"])))
    return losses, constraints, state["params"]


def test_same_losses_on_every_mesh(small_data):
    cfg = load_config(overrides=tiny_overrides(vocab=VOCAB) + [
        f"data.data_dir={small_data}", "train.batch_size=8", "train.warmup_steps=1", "train.learning_rate=1e-2"])
    iterator = pipeline.train_iterator(small_data, cfg.data.seq_len, 8, 0, 0, 1)
    batches = [next(iterator) for _ in range(3)]
    tx = make_optimizer(cfg)
    abstract = state_layout(cfg, tx, make_mesh(MeshConfig(1, 1, 1), jax.devices()[:1]),
                            logical_rules(cfg.mesh)).abstract
    host_state = _initial_state(abstract)
    results = {shape: _run_on_mesh(cfg, shape, host_state, batches) for shape in MESHES}
    reference, _, ref_params = results[(1, 1, 1)]
    assert reference[-1][0] < reference[0][0]  # it trains
    for shape, (losses, constraints, params) in results.items():
        # activation constraints really are in the program (nn.logical_axis_rules was active)
        assert constraints >= 4, (shape, constraints)
        np.testing.assert_allclose(losses, reference, rtol=2e-5, err_msg=str(shape))
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5, err_msg=str(shape))
    # params really are sharded on the (1, 4, 2) mesh: a query kernel (layers, embed, heads, head_dim)
    query = results[(1, 4, 2)][2]["encoder_0"]["layers"]["attention"]["query"]["kernel"]
    assert query.sharding.shard_shape(query.shape)[1:3] == (query.shape[1] // 4, query.shape[2] // 2)


def test_the_cpu_bf16_projections_train_the_same_on_a_sharded_mesh(small_data):
    """The CPU bf16 path of model/projection.py (reshapes and a custom VJP around each matmul) under
    fsdp x tensor sharding: the same losses and gradient norms as one device, to bf16 accuracy."""
    cfg = load_config(overrides=tiny_overrides(vocab=VOCAB) + [
        f"data.data_dir={small_data}", "train.batch_size=8", "train.warmup_steps=1", "train.learning_rate=1e-2",
        "model.dtype=bfloat16"])
    iterator = pipeline.train_iterator(small_data, cfg.data.seq_len, 8, 0, 0, 1)
    batches = [next(iterator) for _ in range(2)]
    abstract = state_layout(cfg, make_optimizer(cfg), make_mesh(MeshConfig(1, 1, 1), jax.devices()[:1]),
                            logical_rules(cfg.mesh)).abstract
    host_state = _initial_state(abstract)
    reference, _, _ = _run_on_mesh(cfg, (1, 1, 1), host_state, batches)
    sharded, constraints, params = _run_on_mesh(cfg, (1, 4, 2), host_state, batches)
    assert constraints >= 4
    np.testing.assert_allclose(sharded, reference, rtol=2e-2)
    query = params["encoder_0"]["layers"]["attention"]["query"]["kernel"]
    assert query.sharding.shard_shape(query.shape)[1:3] == (query.shape[1] // 4, query.shape[2] // 2)


# ----------------------------------------------------------------------------- dry run

def test_dry_run_reports_memory_per_device_without_state_or_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(preset="vanilla-tiny", overrides=["model.num_layers=1", "mesh.data=1", "mesh.fsdp=4",
                                                        "mesh.tensor=2", "train.batch_size=8"])
    report = dry_run(cfg, compiler_options=FAST_COMPILE)
    b = report["per_device_bytes"]
    assert report["mesh"] == "data=1,fsdp=4,tensor=2" and report["devices"] == 8
    assert 0 < b["params"] <= report["params"] * 4 / 4  # 4 bytes a parameter, at least 4-way sharded
    assert abs(b["optimizer"] - 2 * b["params"]) < 64  # AdamW mu + nu (+ step counters)
    assert b["activations"] > 0 and b["arguments"] >= b["params"] + b["optimizer"]
    text = describe_dry_run(report)
    assert "per device: parameters" in text and "activations (temporaries)" in text
    assert not list(tmp_path.iterdir())  # no workdir, no data, nothing written


# ----------------------------------------------------------------------------- golden partition specs

def _spec_list(spec):
    return [list(e) if isinstance(e, tuple) else e for e in spec]


def partition_spec_table(preset="photon-600m", shape=(1, 4, 2)) -> dict:
    cfg = load_config(preset=preset, overrides=[f"mesh.data={shape[0]}", f"mesh.fsdp={shape[1]}",
                                                f"mesh.tensor={shape[2]}"])
    mesh = make_mesh(cfg.mesh)
    rules = logical_rules(cfg.mesh)
    layout = state_layout(cfg, make_optimizer(cfg), mesh, rules)  # jax.eval_shape: nothing allocated
    is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)  # noqa: E731
    logical = jax.tree_util.tree_flatten_with_path(layout.logical_specs, is_leaf=is_spec)[0]
    shardings = jax.tree.leaves(layout.shardings)
    abstract = jax.tree.leaves(layout.abstract)
    leaves = {}
    for (path, spec), sharding, a in zip(logical, shardings, abstract, strict=True):
        leaves[jax.tree_util.keystr(path)] = {"shape": list(a.shape), "dtype": str(a.dtype),
                                              "logical": _spec_list(spec), "mesh": _spec_list(sharding.spec)}
    return {"preset": preset, "mesh": describe_mesh(mesh), "rules": [[n, list(a) if isinstance(a, tuple) else a]
                                                                     for n, a in rules], "leaves": leaves}


def _golden_text(table: dict) -> str:
    """One line per leaf, so that a diff of the golden file reads like the change it records."""
    head = {k: v for k, v in table.items() if k != "leaves"}
    lines = [f"  {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()]
    leaves = [f"    {json.dumps(k)}: {json.dumps(v)}" for k, v in sorted(table["leaves"].items())]
    return "{\n" + "\n".join(lines) + '\n  "leaves": {\n' + ",\n".join(leaves) + "\n  }\n}\n"


def test_golden_partition_specs():
    table = partition_spec_table()
    if os.environ.get("PHOTON_REGEN_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(_golden_text(table))
    golden = json.loads(GOLDEN.read_text())
    assert table["rules"] == golden["rules"], "the rules table changed"
    changed = sorted(k for k in set(table["leaves"]) | set(golden["leaves"])
                     if table["leaves"].get(k) != golden["leaves"].get(k))
    first = changed[0] if changed else None
    assert not changed, (f"{len(changed)} partition specs changed (rerun with PHOTON_REGEN_GOLDEN=1 if intended), "
                         f"first: {first}: {golden['leaves'].get(first)} -> {table['leaves'].get(first)}")
    assert table == golden


# ----------------------------------------------------------------------------- bad input

TINY = tiny_overrides(vocab=VOCAB) + ["train.batch_size=8"]


@pytest.mark.parametrize("extra, message", [
    (["mesh.data=3", "mesh.fsdp=1", "mesh.tensor=1"], "needs 3 devices, but 8 are available"),
    (["mesh.data=1", "mesh.fsdp=1", "mesh.tensor=8"], "is not divisible by mesh axes"),
    (["mesh.data=-1", "mesh.fsdp=3", "mesh.tensor=1"], "does not fit 8 devices"),
    (["mesh.rules=[[batch, [data, fsdp]], [embed, model]]"], "unknown mesh axis 'model'"),
    (["mesh.rules=[[batch, [data, fsdp]], [embed, fsdp]]"], "has no rule for logical axis"),
    (["mesh.data=8", "train.batch_size=4"], "batch size 4 is not divisible by the batch mesh axes"),
])
def test_bad_mesh_is_one_line_exit_2(extra, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = _cli(capsys, "train", "--dry-run", *TINY, *extra)
    assert code == 2 and len(err) == 1 and message in err[0], err


def test_bad_distributed_flags_are_one_line_exit_2(capsys):
    code, _, err = _cli(capsys, "train", "--dry-run", "--num-processes", "2", *TINY)
    assert code == 2 and len(err) == 1 and "missing: coordinator, process id" in err[0], err
    code, _, err = _cli(capsys, "train", "--dry-run", "--coordinator", "nohost", "--num-processes", "2",
                        "--process-id", "0", *TINY)
    assert code == 2 and len(err) == 1 and "HOST:PORT" in err[0], err
