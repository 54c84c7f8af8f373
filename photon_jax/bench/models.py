"""Which models a benchmark runs, their random weights, and the generation modes each one runs.

A model is named by a preset (photon_jax/presets/<name>.yaml) or a YAML file path; the
command's KEY=VALUE overrides apply to every model (e.g. a smaller width for a quick run).
Weights are random: speed and memory do not depend on their values.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from photon_jax.config import Config, ModelConfig, load_config
from photon_jax.errors import UserError
from photon_jax.generation import check_mode
from photon_jax.model.accounting import abstract_params, modes_for
from photon_jax.sharding import strip_boxes

PHOTON_MODES = ("hiergen", "recgen", "exact-local")


@dataclasses.dataclass(frozen=True)
class BenchModel:
    name: str  # the preset name (or YAML file stem) as given on the command line
    cfg: Config

    @property
    def model(self) -> ModelConfig:
        return self.cfg.model

    @property
    def family(self) -> str:
        """"vanilla", "block" (one level: Block Transformer) or "photon"."""
        if self.model.family == "vanilla":
            return "vanilla"
        return "block" if len(self.model.levels) == 1 else "photon"


def parse_list(text: str | None, what: str) -> list[str]:
    """'a,b, c' -> ['a', 'b', 'c']; an empty item or an empty list is a UserError."""
    if text is None:
        return []
    items = [x.strip() for x in text.split(",")]
    if not text.strip() or any(not x for x in items):
        raise UserError(f"{what} {text!r} must be a comma-separated list with no empty items")
    return items


def parse_ints(text: str, what: str, minimum: int = 1) -> list[int]:
    out = []
    for item in parse_list(text, what):
        try:
            value = int(item)
        except ValueError:
            raise UserError(f"{what}: {item!r} is not an integer") from None
        if value < minimum:
            raise UserError(f"{what}: {value} must be >= {minimum}")
        out.append(value)
    return out


def load_models(names: list[str], overrides: list[str] = ()) -> list[BenchModel]:
    if not names:
        raise UserError("--models needs at least one model")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise UserError(f"model {dup!r} is listed twice")
    out = []
    for name in names:
        if name.endswith((".yaml", ".yml")):
            path = Path(name)
            if not path.is_file():
                raise UserError(f"model config file {name} does not exist")
            cfg = load_config(path=str(path), overrides=list(overrides))
            out.append(BenchModel(path.stem, cfg))
        else:
            out.append(BenchModel(name, load_config(preset=name, overrides=list(overrides))))
    return out


def select_modes(models: list[BenchModel], requested: list[str] | None) -> dict[str, list[str]]:
    """Model name -> generation modes to run; raises UserError for a mode a PHOTON model cannot run.

    Vanilla models always run "vanilla". PHOTON models run the requested modes, or by default
    every mode they support, except that one-level models (Block Transformer) run only hiergen:
    with L = 1, recgen is the same computation (generation/photon_runner.py).
    """
    for mode in requested or ():
        if mode not in PHOTON_MODES + ("vanilla",):
            raise UserError(f"unknown generation mode {mode!r} (known: {', '.join(PHOTON_MODES)})")
    out = {}
    for m in models:
        if m.model.family == "vanilla":
            out[m.name] = ["vanilla"]
            continue
        if requested:
            modes = [x for x in requested if x != "vanilla"]
            if not modes:
                raise UserError(f"--modes {','.join(requested)} has no PHOTON mode for {m.name}")
            for mode in modes:
                try:
                    check_mode(m.model, mode)
                except UserError as e:
                    raise UserError(f"{m.name}: {e}") from None
        else:
            modes = modes_for(m.model)
            if len(m.model.levels) == 1:
                modes = ["hiergen"]
        out[m.name] = list(modes)
    return out


def reference_model(models: list[BenchModel]) -> str | None:
    """The first vanilla model: the baseline every ratio is taken against."""
    return next((m.name for m in models if m.model.family == "vanilla"), None)


def dtype_bytes(cfg: ModelConfig) -> int:
    """Bytes per cached value: the KV caches are stored in the compute dtype."""
    return jnp.dtype(cfg.dtype).itemsize


def random_params(cfg: ModelConfig, seed: int = 0):
    """Random weights with the model's parameter shapes, without compiling model.init.

    Matrices ~ N(0, 0.02^2), norm scales 1, biases 0 (LLaMA-like magnitudes, finite in bf16).
    """
    shapes = strip_boxes(abstract_params(cfg))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    key = jax.random.PRNGKey(seed)
    values = []
    for i, (path, s) in enumerate(leaves):
        name = getattr(path[-1], "key", str(path[-1]))
        if len(s.shape) >= 2 and name != "scale":
            values.append(0.02 * jax.random.normal(jax.random.fold_in(key, i), s.shape, s.dtype))
        elif name == "scale":
            values.append(jnp.ones(s.shape, s.dtype))
        else:
            values.append(jnp.zeros(s.shape, s.dtype))
    return jax.tree_util.tree_unflatten(treedef, values)


def random_prompts(vocab_size: int, batch: int, length: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, vocab_size, size=(batch, length)).tolist()
