"""`photon-jax export` / `photon-jax import`: trained runs <-> Hugging Face-style directories.

export (a run's checkpoint -> DIR):
  vanilla          LlamaForCausalLM: config.json, model.safetensors (or shards + index), tokenizer files
  PHOTON / Block   model.safetensors with our parameter paths as names ("decoder_0.layers.mlp.up.kernel",
                   scanned stacks keep their leading layer axis), config.json holding our whole config
import (DIR -> a new run at step 0 that eval, generate and train accept):
  a LLaMA-architecture checkpoint (model_type "llama"), or one of our own exports; its tokenizer
  (SentencePiece tokenizer.model, else Hugging Face tokenizer.json) becomes the run's tokenizer and the
  corpus (data.corpus, default the bundled plays) is prepared with it, so the run can be evaluated,
  sampled and trained at once.
Nothing is written in place: both build a temporary sibling directory and rename it at the end.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import uuid
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np

from photon_jax.config import Config, ModelConfig, apply_overrides, from_dict
from photon_jax.data.loading import pipeline
from photon_jax.errors import UserError
from photon_jax.interop.llama import (
    ARCHITECTURE,
    from_llama_tensors,
    llama_config,
    model_config_from_llama,
    to_llama_tensors,
)
from photon_jax.interop.safetensors_io import DEFAULT_SHARD_BYTES, TensorReader, write_safetensors
from photon_jax.model.accounting import abstract_params
from photon_jax.model.convert import roll_layers, unroll_layers
from photon_jax.runs import checkpoint as ckpt
from photon_jax.runs.workdir import ensure_data, load_run, tokenizer_for
from photon_jax.sharding import logical_rules, make_mesh, strip_boxes
from photon_jax.tokenizers.tokenizer_json import converter_available, write_tokenizer_json
from photon_jax.train.state import init_state, make_optimizer, state_layout

OWN_TYPE = "photon-jax"
# The tokenizer an import takes, in order of preference (a LLaMA-2 directory has both; ours have one).
IMPORT_TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json")
OWN_ARCHITECTURE = "PhotonJaxLM"
FORMAT_VERSION = 1


def _fresh_dir(out: Path) -> Path:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists and is not empty; choose a new directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    return tmp


def _publish(tmp: Path, out: Path) -> None:
    if out.exists():
        out.rmdir()  # empty (checked by _fresh_dir)
    os.replace(tmp, out)


def flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else key
        out.update(flatten(value, name) if isinstance(value, dict) else {name: np.asarray(value)})
    return out


def unflatten(names: list[str], get) -> dict:
    tree: dict = {}
    for name in names:
        *parents, leaf = name.split(".")
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = np.asarray(get(name))
    return tree


def export_run(workdir, out, *, step: int | None = None, overrides: list[str] = (),
               max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> dict:
    """Write a run's parameters (one process; gathered to the host) as a Hugging Face-style directory.
    overrides: key=value, applied to the run's saved config as for eval / generate (load_run)."""
    if jax.process_count() > 1:
        raise UserError("export runs in one process (it gathers every parameter on the host)")
    run = load_run(workdir, step=step, overrides=overrides)
    cfg, tok = run.cfg, run.tokenizer
    params = jax.tree.map(np.asarray, jax.device_get(strip_boxes(run.params)))
    out = Path(out).expanduser().resolve()
    tmp = _fresh_dir(out)
    try:
        if cfg.model.family == "vanilla":
            tensors = to_llama_tensors(cfg.model, unroll_layers(params))
            config = llama_config(cfg.model, cfg.data.seq_len, tok.bos_id, tok.eos_id, tok.pad_id)
        else:
            tensors = flatten(params)
            config = {"architectures": [OWN_ARCHITECTURE], "model_type": OWN_TYPE, "format_version": FORMAT_VERSION}
        config["photon_jax_config"] = cfg.to_dict()  # the whole run config, for a faithful import
        files = write_safetensors(tensors, tmp, max_shard_bytes, {"photon_jax_step": str(run.step)})
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        tok.save(tmp)  # the run's tokenizer file as is, under its own name (tokenizer.model / tokenizer.json)
        if tok.kind == "sentencepiece" and converter_available():  # for readers of tokenizer.json only
            write_tokenizer_json(tok, tmp, cfg.data.seq_len)
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"out": str(out), "family": cfg.model.family, "step": run.step, "tensors": len(tensors),
            "files": [f.name for f in files], "bytes": int(sum(a.nbytes for a in tensors.values())),
            "tokenizer_files": sorted(p.name for p in out.glob("tokenizer*"))}


def _read_config(hf_dir: Path) -> dict:
    path = hf_dir / "config.json"
    try:
        config = json.loads(path.read_text())
    except OSError:
        raise UserError(f"{hf_dir} has no readable config.json") from None
    except json.JSONDecodeError:
        raise UserError(f"{path} is not valid JSON") from None
    if not isinstance(config, dict):
        raise UserError(f"{path} is not a JSON object")
    return config


def _import_config(hf: dict, hf_dir: Path, overrides: list[str]) -> Config:
    where = str(hf_dir)
    if hf.get("model_type") == OWN_TYPE or "photon_jax_config" in hf:
        saved = hf.get("photon_jax_config")
        if not isinstance(saved, dict):
            raise UserError(f"{where}: config.json has no photon_jax_config")
        cfg = from_dict(Config, saved, "config")
    elif hf.get("model_type") == "llama":
        model = model_config_from_llama(hf, where)
        seq_len = min(int(hf.get("max_position_embeddings") or 2048), 2048)
        cfg = dataclasses.replace(Config(), name=hf_dir.name, model=model,
                                  data=dataclasses.replace(Config().data, seq_len=seq_len))
    else:
        raise UserError(f"{where}: model_type {hf.get('model_type')!r} is neither 'llama' nor '{OWN_TYPE}'")
    found = [hf_dir / name for name in IMPORT_TOKENIZER_FILES if (hf_dir / name).is_file()]
    if not found:
        raise UserError(f"{where} has no tokenizer ({' or '.join(IMPORT_TOKENIZER_FILES)}) to make a run with")
    tokenizer = found[0]
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, tokenizer=str(tokenizer), data_dir="",
                                                            vocab_size=0))
    return apply_overrides(cfg, overrides)


def read_params(cfg: ModelConfig, hf: dict, reader: TensorReader, where: str) -> dict:
    """The checkpoint's tensors as our params tree (scanned if the config scans), shapes checked."""
    if hf.get("model_type") == "llama" and ARCHITECTURE in hf.get("architectures", [ARCHITECTURE]):
        params = from_llama_tensors(cfg, reader.get, where)
        if cfg.scan_layers:
            params = roll_layers(params)
    else:
        params = unflatten(reader.names(), reader.get)
    expected = strip_boxes(abstract_params(cfg))  # ShapeDtypeStructs
    if jax.tree.structure(expected) != jax.tree.structure(params):
        raise UserError(f"{where}: its tensors do not match the model its config.json describes")
    for (path, want), have in zip(jax.tree_util.tree_leaves_with_path(expected), jax.tree.leaves(params),
                                  strict=True):
        if tuple(want.shape) != tuple(have.shape):
            raise UserError(f"{where}: {'.'.join(str(k.key) for k in path)} has shape {tuple(have.shape)}, the model "
                            f"needs {tuple(want.shape)}")
    return jax.tree.map(lambda a, e: np.asarray(a, e.dtype), params, expected)


def import_hf(hf_dir, out, overrides: list[str] = (), say=print) -> dict:
    """A Hugging Face-style directory -> a new run directory with a step-0 checkpoint of its weights."""
    hf_dir = Path(hf_dir).expanduser().resolve()
    if not hf_dir.is_dir():
        raise UserError(f"{hf_dir} is not a directory")
    hf = _read_config(hf_dir)
    cfg = _import_config(hf, hf_dir, list(overrides))
    reader = TensorReader(hf_dir)
    params = read_params(cfg.model, hf, reader, str(hf_dir))
    out = Path(out).expanduser().resolve()
    tmp = _fresh_dir(out)
    try:
        manifest, data_dir = ensure_data(cfg, tmp, say)
        tok = tokenizer_for(data_dir, manifest)
        mesh, rules = make_mesh(cfg.mesh), logical_rules(cfg.mesh)
        tx = make_optimizer(cfg)
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            layout = state_layout(cfg, tx, mesh, rules)
            state = init_state(cfg, tx, layout)
            state = dict(state, params=jax.device_put(params, layout.shardings["params"]))
        iterator = pipeline.train_iterator(data_dir, cfg.data.seq_len, cfg.train.batch_size, cfg.data.seed, 0, 1)
        manager = ckpt.make_manager(tmp, async_save=False)
        try:
            ckpt.save(manager, 0, state, iterator.get_state(), cfg,
                      {"tokenizer_sha256": tok.sha256, "vocab_size": manifest["vocab_size"]})
            ckpt.finish(manager)
        finally:
            manager.close()
        (tmp / "config.json").write_text(cfg.to_json())
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"out": str(out), "family": cfg.model.family, "source": str(hf_dir), "tensors": len(reader.names())}
