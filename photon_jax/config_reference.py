"""docs/config.md, generated: every setting of the config dataclasses with its type, default and meaning.

The meaning is the field's own comment in config/schema.py (the comment lines right above it and the one at
the end of its line), so the page cannot drift from the code: tests/test_config_reference.py fails when
docs/config.md differs from what this module writes, or when a field has no comment.

    python -m photon_jax.config_reference > docs/config.md
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import textwrap

from photon_jax import config

SECTIONS = [  # (key prefix, dataclass, what the section is)
    ("", config.Config, "the run"),
    ("model.", config.ModelConfig, "the architecture and its numerics"),
    ("model.levels.N.", config.LevelConfig, "one level of the PHOTON hierarchy (N = 0 is level 1)"),
    ("data.", config.DataConfig, "corpus, tokenizer, preparation and the input pipeline"),
    ("train.", config.TrainConfig, "optimizer, schedule, evaluation, checkpoints, tracking"),
    ("mesh.", config.MeshConfig, "devices and the logical-to-mesh rules (docs/scale-out.md)"),
]
_FIELD = re.compile(r"^    (\w+)\s*:[^=]*=")


def field_comments(cls) -> dict[str, str]:
    """{field name: its comment}: the comment lines just above the field plus its end-of-line comment."""
    comments, pending = {}, []
    for line in textwrap.dedent(inspect.getsource(cls)).splitlines():
        stripped = line.strip()
        if line.startswith("    #") and not line.startswith("     "):
            pending.append(stripped.lstrip("#").strip())
            continue
        match = _FIELD.match(line)
        if match:
            trailing = line.split("  # ", 1)[1].strip() if "  # " in line else ""
            comments[match.group(1)] = " ".join(pending + ([trailing] if trailing else []))
        if not line.startswith("    #"):
            pending = []
    return comments


def _plain(value):
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def _default(field) -> str:
    return "`" + json.dumps(_plain(field.default)).replace("|", "\\|") + "`"


def settings_markdown() -> str:
    out = ["# Every setting", "",
           "Generated from the config dataclasses in `photon_jax/config/schema.py` by",
           "`python -m photon_jax.config_reference`",
           "(a test fails when this page is out of date). A run's config is these defaults, then a preset",
           "(`--preset NAME`, `photon_jax/presets/*.yaml`, which set only what they change) or `--config FILE.yaml`,",
           "then `key=value` overrides with the keys below (`model.width=256 model.levels.0.chunk=2`). The resolved",
           "config is saved as `config.json` in the run directory. Unknown keys and wrong types are refused with",
           "one line naming the nearest known key.", ""]
    for prefix, cls, what in SECTIONS:
        title = prefix.rstrip(".") or "top level"
        out += [f"## `{title}`: {what}", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        comments = field_comments(cls)
        for field in dataclasses.fields(cls):
            if cls is config.Config and dataclasses.is_dataclass(field.default):
                continue  # the sections below
            kind = str(field.type).replace("|", "\\|")
            meaning = comments.get(field.name, "").replace("|", "\\|")
            out.append(f"| `{prefix}{field.name}` | `{kind}` | {_default(field)} | {meaning} |")
        out.append("")
    return "\n".join(out)


def missing_meanings() -> list[str]:
    """Keys whose field has no comment in config/schema.py."""
    missing = []
    for prefix, cls, _ in SECTIONS:
        comments = field_comments(cls)
        for field in dataclasses.fields(cls):
            if cls is config.Config and dataclasses.is_dataclass(field.default):
                continue
            if not comments.get(field.name):
                missing.append(prefix + field.name)
    return missing


if __name__ == "__main__":
    print(settings_markdown())
