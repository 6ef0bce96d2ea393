"""The import structure of the packages: each imports only the packages before it in LAYERS, and
modules import each other in no circle (lazy imports inside functions count too)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("bench_runtime", "bench_data", "pretrain", "transfer", "bench_eval", "benchmarks")
def module_files():
    files = {}
    for layer in LAYERS:
        for path in (ROOT / layer).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def import_graph():
    """{module: the project modules its import statements load}."""
    files = module_files()

    def nearest_module(name):
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {nearest_module(alias.name) for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets |= {nearest_module(f"{base}.{alias.name}") for alias in node.names}
        graph[name] = targets - {"", name}
    return graph


def cycles(graph):
    """The strongly connected components of more than one module (Tarjan), as sets."""
    index, low, stack, found = {}, {}, [], []

    def visit(module):
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in graph[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = set()
            while module not in component:
                component.add(stack.pop())
            if len(component) > 1:
                found.append(component)

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def test_packages_import_only_earlier_layers():
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    backwards = [f"{module} -> {target}" for module, targets in sorted(import_graph().items()) for target in targets
                 if rank[target.split(".")[0]] > rank[module.split(".")[0]]]
    assert backwards == []


def test_no_import_cycles():
    assert cycles(import_graph()) == []
