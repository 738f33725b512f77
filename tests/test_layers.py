"""The package's architecture as a test: no import points up a layer, and no import cycle
(docs/architecture.md, "Layers"). Lazy imports inside functions count too."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "benchmark"

# cli -> engine / report / train -> models / attacks / datasets / store -> robust -> base helpers
LAYERS = {
    "cli": 4,
    "api": 4,
    "__main__": 4,
    "engine": 3,
    "report": 3,
    "train": 3,
    "models": 2,
    "attacks": 2,
    "datasets": 2,
    "store": 2,
    "robust": 1,
}
BASE = 0  # errors, paths, budget, cards, provenance, registry, image_stats, the package root
# the package root re-exports the Python API lazily (module __getattr__): a facade, not a use
FACADES = {("benchmark", "benchmark.api")}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.get(parts[1], BASE) if len(parts) > 1 else BASE


def imports() -> dict[str, set[str]]:
    """module -> the benchmark modules (or packages) it imports, anywhere in its body."""
    out: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        mod = module_name(path)
        pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                found.add(base)
                found |= {f"{base}.{a.name}" for a in node.names}
        out[mod] = {n for n in found if n == "benchmark" or n.startswith("benchmark.")}
    return out


def resolve(name: str, modules: set[str]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def test_no_import_points_up_a_layer() -> None:
    graph = imports()
    upward = sorted(
        f"{mod} (layer {layer(mod)}) imports {target} (layer {layer(target)})"
        for mod, names in graph.items()
        for n in names
        if (target := resolve(n, set(graph))) is not None
        and target != mod
        and (mod, target) not in FACADES
        and layer(target) > layer(mod)
    )
    assert not upward, "\n".join(upward)


def test_no_import_cycles() -> None:
    graph = imports()
    modules = set(graph)
    edges = {
        m: {t for n in ns if (t := resolve(n, modules)) and t != m and not m.startswith(t + ".")}
        - {t for (f, t) in FACADES if f == m}
        for m, ns in graph.items()
    }
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t) :] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(modules):
        if m not in state:
            visit(m)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_argparse_only_in_cli() -> None:
    users = sorted(
        module_name(p)
        for p in PACKAGE.rglob("*.py")
        if "argparse"
        in {
            a.name
            for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
            if isinstance(node, ast.Import)
            for a in node.names
        }
        | {
            node.module
            for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
            if isinstance(node, ast.ImportFrom)
        }
        and not module_name(p).startswith("benchmark.cli")
    )
    assert not users, users
