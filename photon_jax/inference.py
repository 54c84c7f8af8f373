"""Load a trained work directory for evaluation or generation: config, params (no optimizer
state) into the current mesh's shardings, and the tokenizer the run was trained with."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import flax.linen as nn
import jax

from photon_jax.config import Config, MeshConfig
from photon_jax.errors import UserError
from photon_jax.sharding import logical_rules, make_mesh
from photon_jax.train import checkpoint as ckpt
from photon_jax.train.data_setup import load_run_tokenizer
from photon_jax.train.state import params_layout


@dataclasses.dataclass
class LoadedRun:
    cfg: Config
    params: dict
    step: int
    tokenizer: object  # sentencepiece.SentencePieceProcessor
    data_dir: Path
    manifest: dict
    mesh: object
    rules: tuple


def load_run(workdir: str | Path, step: int | None = None, mesh_cfg: MeshConfig | None = None,
             overrides: dict | None = None) -> LoadedRun:
    workdir = Path(workdir).resolve()
    if not workdir.is_dir():
        raise UserError(f"work directory {workdir} does not exist")
    if not ckpt.checkpoint_dir(workdir).is_dir():
        raise UserError(f"work directory {workdir} has no checkpoints; train first")
    manager = ckpt.make_manager(workdir, async_save=False)
    try:
        steps = manager.all_steps()
        if not steps:
            raise UserError(f"work directory {workdir} has no complete checkpoint")
        if step is None:
            step = max(steps)
        elif step not in steps:
            raise UserError(f"no checkpoint at step {step} in {workdir} (have {sorted(steps)})")
        cfg, meta = ckpt.restore_metadata(manager, step)
        if mesh_cfg is not None:
            cfg = dataclasses.replace(cfg, mesh=mesh_cfg)
        if overrides:
            cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **overrides))
        mesh = make_mesh(cfg.mesh)
        rules = logical_rules(cfg.mesh)
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            layout = params_layout(cfg, mesh, rules)
            params = ckpt.restore_params(manager, step, layout.abstract, layout.shardings)
    finally:
        manager.close()
    tokenizer, data_dir, manifest = load_run_tokenizer(cfg, workdir, meta)
    return LoadedRun(cfg, params, step, tokenizer, data_dir, manifest, mesh, rules)
