"""docs/design.md agrees with the layering test: its layer table is the one scripts/print_layers.py prints
from tests/test_layout.py's LAYERS, and its floor plan gives every package and module of that table a
line, in layer order."""

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("print_layers", ROOT / "scripts" / "print_layers.py")
print_layers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(print_layers)

DOC = print_layers.DESIGN_DOC.read_text()


def test_the_layer_table_is_the_one_the_layout_test_defines():
    block = print_layers.doc_block(DOC)
    assert block is not None, "docs/design.md lost its layer block markers"
    assert block == print_layers.render(print_layers.load_layers()), (
        "docs/design.md's layer table is stale: run python scripts/print_layers.py --write")


def floor_plan_names(doc: str) -> list[str]:
    """The names of the floor plan's top entries (`pallas_kernels/`, and each `name/` or `name.py` one
    level under photon_jax/), in the order the plan lists them."""
    plan = re.search(r"```\n(.*?)```", doc[doc.index(print_layers.END):], re.S).group(1)
    names = []
    for line in plan.splitlines():
        entry = re.match(r"( {0,2})(\S.*?)(?:\s{2,}|$)", line)
        if entry and not line.startswith("   ") and entry.group(2) != "photon_jax/":
            names += entry.group(2).split(", ")
    return names


def test_the_floor_plan_lists_every_layer_member_in_layer_order():
    layers = print_layers.load_layers()
    # photon_jax.serve -> serve/ (the plan lists photon_jax's members under photon_jax/), pallas_kernels/ as is
    layer_of = {print_layers.path_of(module).removeprefix("photon_jax/"): index
                for index, members in enumerate(layers) for module in members}
    listed = floor_plan_names(DOC)
    assert sorted(listed) == sorted(layer_of), f"floor plan {sorted(listed)} vs layers {sorted(layer_of)}"
    order = [layer_of[name] for name in listed]
    assert order == sorted(order), f"floor plan out of layer order: {listed}"
