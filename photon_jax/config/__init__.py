"""Typed, validated configuration. schema.py holds the settings (one frozen dataclass per section, every
default, the cross-field checks); files.py builds a Config from presets, YAML files and dotted
overrides. Every setting with its type, default and meaning: docs/config.md."""

from photon_jax.config.files import (
    GRID_DIR,
    PRESET_DIR,
    apply_overrides,
    config_from_json,
    from_dict,
    list_presets,
    load_config,
    parse_overrides,
    read_yaml_mapping,
    unknown_key,
)
from photon_jax.config.schema import (
    RUNTIME_MODEL_FIELDS,
    Config,
    DataConfig,
    LevelConfig,
    MeshConfig,
    ModelConfig,
    TrainConfig,
    parse_mixture,
    validate_model,
    window_order_seed,
)
from photon_jax.errors import ConfigError

__all__ = ["GRID_DIR", "PRESET_DIR", "RUNTIME_MODEL_FIELDS", "Config", "ConfigError", "DataConfig", "LevelConfig",
           "MeshConfig", "ModelConfig", "TrainConfig", "apply_overrides", "config_from_json", "from_dict",
           "list_presets", "load_config", "parse_mixture", "parse_overrides", "read_yaml_mapping", "unknown_key",
           "validate_model", "window_order_seed"]
