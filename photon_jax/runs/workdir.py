"""A run's work directory: its prepared data (prepared on first use), the tokenizer a checkpoint was
trained with, and loading a trained run (config, params into the current mesh's shardings, tokenizer).

Layout of <workdir>: checkpoints/<step>/ (checkpoint.py), config.json, metrics.jsonl, summary.json,
TensorBoard events, and data/ unless data.data_dir points elsewhere.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np

from photon_jax.config import Config, MeshConfig, apply_overrides, parse_mixture
from photon_jax.data.loading.mixture import load_sources
from photon_jax.data.manifest import load_manifest
from photon_jax.data.preparation.prepare import prepare
from photon_jax.errors import UserError
from photon_jax.model.accounting import abstract_params
from photon_jax.runs import checkpoint as ckpt
from photon_jax.sharding import StateLayout, layout_of, logical_rules, make_mesh
from photon_jax.tokenizers.tokenizer import Tokenizer, check_vocab, load_tokenizer

DEFAULT_DATA_DIR = "data"  # <workdir>/data, unless data.data_dir is set


def data_dir_for(cfg: Config, workdir: Path) -> Path:
    if cfg.data.mixture:
        return parse_mixture(cfg.data.mixture)[0][0]  # the first source holds the run's tokenizer
    return Path(cfg.data.data_dir).expanduser().resolve() if cfg.data.data_dir else Path(workdir) / DEFAULT_DATA_DIR


def ensure_mixture_data(cfg: Config) -> tuple[dict, Path]:
    """data.mixture: every source must be prepared already (a mixture prepares nothing), with one
    tokenizer that fits the model; returns the first source's manifest and dir, as ensure_data does."""
    first = load_sources(cfg.data.mixture)[0]
    check_vocab(first.manifest, cfg.model.vocab_size, what=f"model.vocab_size={cfg.model.vocab_size}")
    return first.manifest, first.data_dir


def ensure_data(cfg: Config, workdir: Path, say=print, process_index: int = 0,
                process_count: int = 1) -> tuple[dict, Path] | None:
    """The prepared data for this run (prepared now if missing); its tokenizer must match the model.

    With several processes every one calls this: each tokenizes its share of the work units and process 0
    merges; the others get None and must wait for process 0 (a barrier), then call again to load."""
    if cfg.data.mixture:
        return ensure_mixture_data(cfg)
    data_dir = data_dir_for(cfg, workdir)
    if not (data_dir / "manifest.json").exists():
        vocab = cfg.data.vocab_size or cfg.model.vocab_size
        say(f"preparing {cfg.data.corpus} into {data_dir} (tokenizer vocab {vocab}) ...")
        manifest = prepare(cfg.data, data_dir, vocab, process_index=process_index, process_count=process_count)
        if not manifest.get("merged", True):
            return None
        train = manifest["splits"]["train"]
        val = manifest["splits"]["validation"]
        say(f"prepared {manifest['documents']} documents: {train['tokens']:,} train / {val['tokens']:,} "
            f"validation tokens in {manifest['seconds']:.1f}s")
    manifest = load_manifest(data_dir)
    check_vocab(manifest, cfg.model.vocab_size, what=f"model.vocab_size={cfg.model.vocab_size}")
    return manifest, data_dir


def tokenizer_for(data_dir: Path, manifest: dict) -> Tokenizer:
    return load_tokenizer(data_dir / manifest["tokenizer"]["file"])


def token_byte_lengths_for(data_dir: Path, manifest: dict) -> np.ndarray:
    return tokenizer_for(data_dir, manifest).byte_lengths()


def load_run_tokenizer(cfg: Config, workdir: Path, meta: dict) -> tuple[Tokenizer, Path, dict]:
    """The tokenizer a checkpoint was trained with; refuses one whose hash differs."""
    data_dir = data_dir_for(cfg, workdir)
    manifest = load_manifest(data_dir)
    tokenizer = tokenizer_for(data_dir, manifest)
    expected = meta.get("tokenizer_sha256")
    if expected and tokenizer.sha256 != expected:
        raise UserError(f"tokenizer in {data_dir} (sha256 {tokenizer.sha256[:12]}) is not the one the checkpoint "
                        f"was trained with ({expected[:12]})")
    check_vocab(tokenizer, cfg.model.vocab_size, what=f"the checkpoint's model.vocab_size={cfg.model.vocab_size}")
    return tokenizer, data_dir, manifest


def params_layout(cfg: Config, mesh, rules) -> StateLayout:
    """Params only (evaluation / generation without optimizer state): abstract shapes and shardings."""
    return layout_of(abstract_params(cfg.model, cfg.data.seq_len), mesh, rules)


def mesh_placement(cfg: Config) -> tuple[object, tuple, StateLayout]:
    """The mesh of cfg.mesh, its logical rules, and the params' abstract shapes and shardings on it: where
    a loaded run's params go (load_run restores into these shardings, place_params copies into them)."""
    mesh = make_mesh(cfg.mesh)
    rules = logical_rules(cfg.mesh)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        layout = params_layout(cfg, mesh, rules)
    return mesh, rules, layout


def place_params(cfg: Config, params) -> dict:
    """Params in host memory, the same values on every process (e.g. drawn from one key), spread over the
    global mesh in the shardings a loaded run's params get; each process fills only its own shards."""
    _, _, layout = mesh_placement(cfg)

    def put(x, sharding):
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
    return jax.tree.map(put, params, layout.shardings)


@dataclasses.dataclass
class LoadedRun:
    cfg: Config
    params: dict
    step: int
    tokenizer: Tokenizer
    data_dir: Path
    manifest: dict
    mesh: object
    rules: tuple


def load_run(workdir: str | Path, step: int | None = None, mesh_cfg: MeshConfig | None = None,
             overrides: list[str] = ()) -> LoadedRun:
    """A trained run's params (no optimizer state) in the shardings of `mesh_cfg` (default: the saved
    mesh). `overrides` are `key=value` config overrides applied to the saved config (mesh.*, train.*,
    data.*, and the model fields that do not change the parameters: config.RUNTIME_MODEL_FIELDS);
    one that would change the parameters is refused with one line."""
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
        saved, meta = ckpt.restore_metadata(manager, step)
        cfg = apply_overrides(saved, overrides)
        mismatch = ckpt.model_mismatch(saved, cfg)
        if mismatch:
            raise UserError(f"an override changes the parameters of the checkpoint's model ({mismatch})")
        if mesh_cfg is not None:
            cfg = dataclasses.replace(cfg, mesh=mesh_cfg)
        mesh, rules, layout = mesh_placement(cfg)
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            params = ckpt.restore_params(manager, step, layout.abstract, layout.shardings)
    finally:
        manager.close()
    tokenizer, data_dir, manifest = load_run_tokenizer(cfg, workdir, meta)
    return LoadedRun(cfg, params, step, tokenizer, data_dir, manifest, mesh, rules)


def init_params_from(source: str | Path, cfg: Config, abstract_params, shardings, tokenizer_sha256: str):
    """The latest params of the run in `source`, for train.init_from: same model, same tokenizer."""
    source = Path(source).expanduser().resolve()
    if not ckpt.checkpoint_dir(source).is_dir():
        raise UserError(f"train.init_from={source}: no checkpoints there")
    manager = ckpt.make_manager(source, async_save=False)
    try:
        step = ckpt.latest_step(manager)
        if step is None:
            raise UserError(f"train.init_from={source}: no complete checkpoint")
        saved, meta = ckpt.restore_metadata(manager, step)
        mismatch = ckpt.model_mismatch(saved, cfg)
        if mismatch:
            raise UserError(f"train.init_from={source} holds another model ({mismatch})")
        if meta.get("tokenizer_sha256") != tokenizer_sha256:
            raise UserError(f"train.init_from={source} was trained with another tokenizer than this run's data")
        return ckpt.restore_params(manager, step, abstract_params, shardings), step
    finally:
        manager.close()
