"""Building a Config: dataclass defaults, then a preset YAML under photon_jax/presets/ (package data;
experiments/configs links there) or any YAML file, then `key=value` overrides with dotted keys
(`model.width=256`, `model.levels.0.chunk=2`, `train.steps=100`). Every step goes through `from_dict`,
which rejects unknown keys (naming the nearest known one) and wrong types, and ends in `Config.validate`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from photon_jax.config.schema import Config
from photon_jax.errors import ConfigError

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"  # package data (also experiments/configs)
GRID_DIR = PRESET_DIR / "grids"


# ----------------------------------------------------------------------------- dict <-> dataclass

def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert a YAML/JSON value to the annotated field type, or raise ConfigError."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return from_dict(annotation, value, where)
    if origin is tuple:
        args = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}.{i}") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where} must have {len(args)} elements, got {value!r}")
        return tuple(_coerce(v, a, f"{where}.{i}") for i, (v, a) in enumerate(zip(value, args)))
    if origin in (typing.Union, types.UnionType):
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return str(value)
    return _freeze(value)


def _freeze(value: Any) -> Any:
    """Lists -> tuples, recursively, so frozen configs stay hashable and round-trip through JSON."""
    return tuple(_freeze(v) for v in value) if isinstance(value, (list, tuple)) else value


def unknown_key(where: str, key: Any, known) -> str:
    """The one-line error for an unknown key, naming the nearest known keys first."""
    known = sorted(str(k) for k in known)
    near = difflib.get_close_matches(str(key), known, n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(f'{where}.{k}' for k in near)}? " if near else ""
    return f"unknown key {where}.{key} ({hint}known: {', '.join(known)})"


def from_dict(cls: type, data: dict, where: str = "config") -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names, key=str)
    if unknown:
        raise ConfigError(unknown_key(where, unknown[0], names))
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


# ----------------------------------------------------------------------------- presets + overrides

def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def read_yaml_mapping(path: Path, what: str = "config") -> dict:
    """A YAML file that must hold a mapping; unreadable or malformed files are one-line ConfigErrors."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must be a YAML mapping")
    return data


def _read_yaml(path: Path) -> dict:
    data = read_yaml_mapping(path)
    base = data.pop("base", None)
    if base is not None:
        data = _merge(_read_yaml(_preset_path(base)), data)
    return data


def _preset_path(name: str) -> Path:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {name!r} (known: {', '.join(list_presets())})")
    return path


def parse_overrides(overrides: list[str]) -> dict:
    """['model.width=256', 'model.levels.0.chunk=2'] -> nested dict (list indices kept as str)."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        if re.fullmatch(r"[-+]?\d+(:\d+)+", raw):  # "2:3" stays text (YAML 1.1 would read base 60: 123)
            value = raw
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override")
        node[parts[-1]] = value
    return tree


def _apply_tree(data: Any, tree: dict, where: str) -> Any:
    """Merge an override tree into plain config data, supporting list indices."""
    if isinstance(data, list):
        out = list(data)
        for key, value in tree.items():
            if not key.isdigit() or int(key) >= len(out):
                raise ConfigError(f"override {where}.{key}: no such list element (length {len(out)})")
            i = int(key)
            out[i] = _apply_tree(out[i], value, f"{where}.{key}") if isinstance(value, dict) else value
        return out
    if not isinstance(data, dict):
        raise ConfigError(f"override {where} goes into a value that is not a mapping")
    out = dict(data)
    for key, value in tree.items():
        if key not in out:
            raise ConfigError(unknown_key(where, key, out))
        if isinstance(value, dict) and isinstance(out[key], (dict, list)):
            out[key] = _apply_tree(out[key], value, f"{where}.{key}")
        else:
            out[key] = value
    return out


def load_config(preset: str | None = None, path: str | None = None, overrides: list[str] = ()) -> Config:
    """Defaults <- preset or YAML file <- overrides, validated."""
    data = Config().to_dict()
    if preset and path:
        raise ConfigError("give either a preset or a config file, not both")
    if preset:
        data = _merge(data, _read_yaml(_preset_path(preset)))
        data.setdefault("name", preset)
        if data["name"] == "custom":
            data["name"] = preset
    elif path:
        data = _merge(data, _read_yaml(Path(path)))
    return apply_overrides(from_dict(Config, data), overrides)  # from_dict materialises nested defaults


def apply_overrides(cfg: Config, overrides=()) -> Config:
    """A config with dotted `key=value` overrides applied, validated."""
    data = cfg.to_dict()
    if overrides:
        data = _apply_tree(data, parse_overrides(list(overrides)), "config")
    return from_dict(Config, data).validate()


def config_from_json(text: str) -> Config:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"saved config is not valid JSON: {e}") from None
    return from_dict(Config, data).validate()
