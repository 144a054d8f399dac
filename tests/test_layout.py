"""The package's layering: every module imports only from its own layer or the layers below it, at module level,
and no two modules import each other (even through others). README's "Layout" section is the same table."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"

# Bottom first. A module belongs to the first entry that is its name or a package containing it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("pipeline", "pipeline.errors", "pipeline.digest", "pipeline.units", "pipeline.files", "pipeline.clock",
     "pipeline.ref", "pipeline.progress", "pipeline.userfiles",
     "pipeline.interrupt", "pipeline.heap", "pipeline.background", "pipeline.faults"),  # leaves: the tool's vocabulary
    ("pipeline.trt",),  # TensorRT and the GPU
    ("pipeline.stages",),  # the stage registry and one module per stage
    ("pipeline.recipe",),  # load, validate, freeze (specs through the registry)
    ("pipeline.manifest",),  # the typed, checked manifest
    ("pipeline.store",),  # everything under the store root
    ("pipeline.validate",),  # numerics
    ("pipeline.build",),  # one recipe to published artifacts
    ("pipeline.lifecycle",),  # channels, promotion, gc, Triton export
    ("pipeline.nightly",),  # many recipes, many targets
    ("pipeline.commands",),  # the only layer that prints
    ("pipeline.cli", "pipeline.__main__", "pipeline.entry"),  # the entry points and their one error handler
)


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    best = None
    for index, names in enumerate(LAYERS):
        for name in names:
            if module == name or (name != "pipeline" and module.startswith(name + ".")):
                best = index
    if best is None and module == "pipeline":
        return 0
    assert best is not None, f"{module} is in no layer: add it to LAYERS (and to README's Layout section)"
    return best


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported project module, line, at module level) for every import of the project in `path`; imports under
    `if TYPE_CHECKING:` are annotations only and are left out."""
    tree = ast.parse(path.read_text(), str(path))
    typing_only = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING"
                   for node in ast.walk(block)}
    # module level: the module's own statements, and those of a try at module level (__main__ catches an
    # interrupt that arrives while it imports the CLI)
    top = {id(node) for node in tree.body} | {id(inner) for block in tree.body if isinstance(block, ast.Try)
                                              for inner in block.body}
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pipeline":
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                target = candidate if (PACKAGE.parent / (candidate.replace(".", "/") + ".py")).exists() or \
                    (PACKAGE.parent / candidate.replace(".", "/")).is_dir() else node.module
                found.append((target, node.lineno, id(node) in top))
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno, id(node) in top) for a in node.names if a.name.split(".")[0] == "pipeline"]
    return found


MODULES = {_module(path): path for path in sorted(PACKAGE.rglob("*.py"))}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_and_sit_at_module_level(module: str) -> None:
    path, layer = MODULES[module], _layer(module)
    for target, line, top in _imports(path):
        where = f"{path.relative_to(PACKAGE.parent)}:{line}"
        assert top, f"{where}: function-local import of {target}; project modules are imported at module level"
        assert _layer(target) <= layer, f"{where}: {module} (layer {layer}) imports {target} (layer {_layer(target)})"


def test_no_import_cycles() -> None:
    graph = {module: {t for t, _, _ in _imports(path) if t in MODULES and t != module}
             for module, path in MODULES.items()}
    done: set[str] = set()

    def visit(module: str, stack: list[str]) -> None:
        if module in stack:
            cycle = stack[stack.index(module):] + [module]
            # A package importing its own submodules (a registry) is the one allowed loop: package -> child.
            if not all(b.startswith(a + ".") or a.startswith(b + ".") for a, b in zip(cycle, cycle[1:])):
                pytest.fail("import cycle: " + " -> ".join(cycle))
            return
        if module in done:
            return
        for target in sorted(graph[module]):
            visit(target, stack + [module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_every_module_is_in_a_layer() -> None:
    for module in MODULES:
        _layer(module)


def test_modules_are_loaded_by_name_only_through_the_two_seams() -> None:
    """importlib.import_module bypasses the checks above, so it has two owners: the backend adapter (a TensorRT
    module named by the user) and the command table (pipeline.commands.module, which loads command modules of its
    own layer). Anything else must import at module level."""
    allowed = {"pipeline.trt.backend", "pipeline.commands"}
    for module, path in MODULES.items():
        if "import_module" in path.read_text() and module not in allowed:
            pytest.fail(f"{path.relative_to(PACKAGE.parent)} loads a module by name; import it at module level")
