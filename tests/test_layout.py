"""Where code lives: the package's layers, no import cycles, one method module per implemented notebook."""

import ast
from pathlib import Path

import pytest

from companion import catalog

PACKAGE = Path(__file__).resolve().parent.parent / "companion"

# Bottom to top. A module imports only from its own layer's package or from lower layers; methods never
# import each other (what a second paper needs moves down into a core package).
LAYERS = [
    ("runtime", "catalog", "metrics"),
    ("data", "masks", "eval", "audio"),
    ("models", "params"),
    ("train",),
    ("masking", "diffusion", "attacks"),
    ("mim", "distill", "viz", "claims"),
    ("zoo",),
    ("methods",),
    ("runner", "report"),
    ("cli",),
    ("__main__",),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Modules of ``companion`` (dotted, relative to the package) that ``path`` imports."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
            elif node.module and node.module.split(".")[0] == "companion":
                base = []
            else:
                continue
            mod = base + (node.module.split(".") if node.module else [])
            if not node.level and mod and mod[0] == "companion":
                mod = mod[1:]
            for alias in node.names:  # `from . import x` may name a submodule
                sub = mod + [alias.name]
                found.add(".".join(sub) if (PACKAGE.joinpath(*sub).with_suffix(".py").is_file()
                                            or PACKAGE.joinpath(*sub).is_dir()) else ".".join(mod))
        elif isinstance(node, ast.Import):
            found |= {a.name[len("companion."):] for a in node.names if a.name.startswith("companion.")}
    return {m for m in found if m} - {name}


GRAPH = {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}


def layer(module: str) -> int:
    top = module.split(".")[0]
    return next(i for i, names in enumerate(LAYERS) if top in names)


def test_every_module_belongs_to_a_layer():
    for module in GRAPH:
        if module:
            assert layer(module) >= 0


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m))
def test_imports_go_down_the_layers(module):
    for dep in GRAPH[module]:
        same_package = dep.split(".")[0] == module.split(".")[0]
        assert layer(dep) < layer(module) or (same_package and layer(dep) == layer(module)), \
            f"{module} (layer {layer(module)}) imports {dep} (layer {layer(dep)})"
        if module.startswith("methods.") and dep.startswith("methods."):
            assert dep.count(".") < 2, f"{module} imports another paper's module {dep}; move what both need down"


def test_the_import_graph_has_no_cycles():
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for d in GRAPH.get(m, ()):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack, m, d]))
            if d in GRAPH and not state.get(d):
                visit(d, [*stack, m])
        state[m] = 2

    for m in GRAPH:
        if not state.get(m):
            visit(m, [])


@pytest.mark.parametrize("paper", catalog.implemented(), ids=lambda p: p.slug)
def test_each_notebook_has_its_method_module_or_says_why_not(paper):
    if paper.no_method_module:
        assert not paper.method_module.is_file(), f"{paper.slug} has a module; drop no_method_module"
    else:
        assert paper.method_module.is_file(), f"{paper.slug}: expected {paper.method_module.relative_to(PACKAGE.parent)}"
