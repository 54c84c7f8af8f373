"""Print the package layers as a markdown table, from the one table that defines them: LAYERS in
tests/test_layout.py (the test that fails on an import from a higher layer).

    python scripts/print_layers.py            # the block, on stdout
    python scripts/print_layers.py --write    # replace the block between the markers in docs/design.md

tests/test_design_doc.py checks that docs/design.md holds exactly this block.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYOUT_TEST = ROOT / "tests" / "test_layout.py"
DESIGN_DOC = ROOT / "docs" / "design.md"
BEGIN = "<!-- layers: begin (written by scripts/print_layers.py from tests/test_layout.py's LAYERS; do not edit) -->"
END = "<!-- layers: end -->"


def load_layers() -> list[set[str]]:
    """LAYERS from the layout test, loaded by path (tests/ is no package); it imports only ast and pathlib."""
    spec = importlib.util.spec_from_file_location("test_layout", LAYOUT_TEST)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.LAYERS


def path_of(module: str) -> str:
    """photon_jax.serve -> photon_jax/serve/ (a package), photon_jax.errors -> photon_jax/errors.py."""
    rel = Path(*module.split("."))
    return f"{rel}/" if (ROOT / rel).is_dir() else f"{rel}.py"


def render(layers: list[set[str]]) -> str:
    rows = [BEGIN, "| layer | packages and modules |", "|---|---|"]
    for index, names in enumerate(layers, start=1):
        rows.append(f"| {index} | " + ", ".join(f"`{path_of(name)}`" for name in sorted(names)) + " |")
    return "\n".join(rows + [END])


def doc_block(text: str) -> str | None:
    """The block between the markers (markers included), or None when the doc has no such block."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        return None
    return text[start:end + len(END)]


def write(doc: Path, block: str) -> None:
    text = doc.read_text()
    old = doc_block(text)
    if old is None:
        raise SystemExit(f"{doc}: no '{BEGIN}' ... '{END}' block to replace")
    doc.write_text(text.replace(old, block))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"replace the block in {DESIGN_DOC.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    block = render(load_layers())
    if args.write:
        write(DESIGN_DOC, block)
    else:
        print(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
