"""The prepared data dir's manifest: the one contract between offline preparation and online loading.

`photon-jax prepare` (data/preparation) writes manifest.json last, after every shard and split index
it names; the training and evaluation pipelines (data/loading), evaluation and the run loader read it
through `load_manifest`, which refuses a missing, corrupt, foreign or unreadable-version manifest with
one line naming the fix. Layout and fields: docs/data.md.
"""

from __future__ import annotations

import json
from pathlib import Path

from photon_jax.errors import UserError

FORMAT = "photon-jax-prepared-data"
FORMAT_VERSION = 3  # 3: the split computed per document (data/preparation/split.py); 2: a shuffle in memory
READABLE_VERSIONS = (2, 3)  # a version-2 dir's split is stored in its index files: it loads as it is
MANIFEST_FILE = "manifest.json"
SPLITS = ("train", "validation")


def load_manifest(data_dir: str | Path) -> dict:
    path = Path(data_dir).expanduser() / MANIFEST_FILE
    if not path.is_file():
        raise UserError(f"data dir {Path(data_dir)} has no {MANIFEST_FILE}; run photon-jax prepare")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is unreadable or corrupt ({type(e).__name__}); "
                        "run photon-jax prepare --force") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"{path} is not a photon-jax data manifest; run photon-jax prepare --force")
    if manifest.get("format_version") not in READABLE_VERSIONS:
        raise UserError(f"{path} has format version {manifest.get('format_version')}, this code reads "
                        f"{' and '.join(map(str, READABLE_VERSIONS))}; run photon-jax prepare --force")
    return manifest
