"""The package's shape: data flows one way (a module imports only from layers before it) and no
module imports itself back through others. Read from the source with ``ast``, so type-only imports
count too."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ppl_vae"
LAYERS = ["errors", "validation", "registry", "config", "data", "parts", "models", "objectives", "training",
          "evaluation", "plots", "build", "runs", "experiments", "cli"]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Module -> the ppl_vae modules it imports (a package's own submodules count as themselves)."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name, targets = module_name(path), set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ppl_vae"):
                own = node.module in (name, "ppl_vae")  # a package's own submodules, or `from ppl_vae import plots`
                targets |= {f"{node.module}.{alias.name}" if own else node.module for alias in node.names}
            elif isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names if alias.name.startswith("ppl_vae")}
        graph[name] = targets - {name}
    return graph


def layer(module: str) -> str:
    return module.split(".")[1] if "." in module else "__init__"


def test_every_module_is_in_a_layer():
    assert {layer(module) for module in imports()} - {"__init__", "configs"} <= set(LAYERS)


def test_no_module_imports_from_a_later_layer():
    upward = [f"{module} imports {target}" for module, targets in imports().items() for target in targets
              if layer(module) in LAYERS and LAYERS.index(layer(target)) > LAYERS.index(layer(module))]
    assert upward == []


def test_no_import_cycles():
    graph = imports()

    def reachable(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for target in graph.get(todo.pop(), ()):
                if target not in seen:
                    seen.add(target)
                    todo.append(target)
        return seen

    assert [module for module in graph if module in reachable(module)] == []
