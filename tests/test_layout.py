"""The package layout follows the pipeline: config -> tokenizers -> data -> model -> generation / runs -> eval ->
serve -> train -> scaleout -> interop -> bench -> sweep -> cli. No module imports from a layer above its own, and no
import hides inside a function (a lazy import would only dodge a cycle)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = [  # lowest first; a module may import its own layer and the ones before it
    {"pallas_kernels"},  # standalone: imports nothing of photon_jax
    {"photon_jax.errors", "photon_jax.config", "photon_jax.config_reference", "photon_jax.host_allocator",
     "photon_jax.reports"},
    {"photon_jax.tokenizers"},
    {"photon_jax.sharding", "photon_jax.distributed", "photon_jax.lockstep", "photon_jax.data"},
    {"photon_jax.model"},
    {"photon_jax.generation", "photon_jax.runs"},
    {"photon_jax.eval"},
    {"photon_jax.serve"},
    {"photon_jax.train"},
    {"photon_jax.scaleout"},  # compiles train's programs to audit them; train imports nothing of it
    {"photon_jax.interop"},
    {"photon_jax.bench"},
    {"photon_jax.sweep"},
    {"photon_jax.cli"},
]
LAZY_OK: set[str] = set()  # modules allowed an import inside a function (none: scripts/ holds the CLIs)


def layer_of(module: str) -> int | None:
    for index, names in enumerate(LAYERS):
        if any(module == name or module.startswith(name + ".") for name in names):
            return index
    return None


def project_imports(tree: ast.AST):
    """(imported module, line, at module top?) for every import of photon_jax / pallas_kernels."""
    top = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name.split(".")[0] in ("photon_jax", "pallas_kernels"):
                yield name, node.lineno, id(node) in top


def modules():
    for package in ("photon_jax", "pallas_kernels"):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT)
            yield str(rel), ".".join(rel.with_suffix("").parts).removesuffix(".__init__"), path


def test_every_module_has_a_layer():
    missing = [name for _, name, _ in modules() if layer_of(name) is None and name not in ("photon_jax",)]
    assert not missing, missing


def test_no_import_from_a_higher_layer_and_none_inside_functions():
    upward, lazy = [], []
    for rel, name, path in modules():
        own = layer_of(name)
        for imported, line, at_top in project_imports(ast.parse(path.read_text())):
            target = layer_of(imported)
            if own is not None and target is not None and target > own:
                upward.append(f"{rel}:{line} ({LAYERS[own]}) imports {imported}")
            if not at_top and rel not in LAZY_OK and not rel.startswith("photon_jax/cli/"):
                lazy.append(f"{rel}:{line} imports {imported} inside a function")
    assert not upward, "\n".join(upward)
    assert not lazy, "\n".join(lazy)


def test_the_model_never_imports_generation_and_never_names_a_mesh_axis():
    for path in sorted((ROOT / "photon_jax" / "model").glob("*.py")):
        text = path.read_text()
        assert "photon_jax.generation" not in text, path
        for axis in ('"data"', '"fsdp"', '"tensor"'):
            assert axis not in text, (path, axis)


PREPARATION = "photon_jax.data.preparation"
# modules outside data/ that may reach into preparation: the run loader (prepares a missing data dir on
# demand) and the training loop that drives it (it reports prepare's signal stop), the prepare command, its
# benchmark and that benchmark's argument checks
MAY_PREPARE = {"photon_jax.runs.workdir", "photon_jax.train.loop", "photon_jax.cli.cmd_prepare",
               "photon_jax.bench.prepare_bench", "photon_jax.cli.cmd_bench"}


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (a `from package import name` counts the name's module)."""
    names = {name for _, name, _ in modules()}
    graph = {}
    for _, name, path in modules():
        found = set()
        for imported, _, _ in project_imports(ast.parse(path.read_text())):
            while imported and imported not in names:  # a name inside a module -> that module
                imported = imported.rpartition(".")[0]
            if imported:
                found.add(imported)
        graph[name] = found
    return graph


def test_the_online_pipeline_reaches_no_preparation_module():
    graph = import_graph()
    roots = [name for name in graph if name.startswith("photon_jax.data.loading")]
    assert {"photon_jax.data.loading.packing", "photon_jax.data.loading.pipeline",
            "photon_jax.data.loading.mixture"} <= set(roots)
    for root in roots:
        seen, todo = set(), [root]
        while todo:
            for imported in graph[todo.pop()] - seen:
                seen.add(imported)
                todo.append(imported)
        reached = sorted(m for m in seen if m.startswith(PREPARATION))
        assert not reached, f"{root} reaches {reached}"


def test_only_the_run_loader_and_the_prepare_command_import_preparation():
    graph = import_graph()
    importers = sorted(name for name, imported in graph.items()
                       if not name.startswith(PREPARATION) and any(m.startswith(PREPARATION) for m in imported))
    assert set(importers) <= MAY_PREPARE, sorted(set(importers) - MAY_PREPARE)
    assert not [name for name in importers if name.startswith("photon_jax.eval")]
