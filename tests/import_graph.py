"""The import graph of a package, read from its sources with `ast` (lazy imports inside functions count): the
one reader behind tests/test_exporter_layout.py (the exporter) and tests/runtime/test_runtime_layout.py (the runtime)."""

from __future__ import annotations

import ast
from pathlib import Path


class ImportGraph:
    """Modules of the package at `root` (a folder with __init__.py) and, for each, the modules it imports."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.modules = {self.module_name(p): p for p in root.rglob("*.py")}
        self.edges = {m: {i for i in self.imports(m) if i in self.modules and i != m} for m in self.modules}

    def module_name(self, path: Path) -> str:
        parts = path.relative_to(self.root.parent).with_suffix("").parts
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    def trees(self, module: str) -> ast.Module:
        return ast.parse(self.modules[module].read_text(encoding="utf-8"))

    def imports(self, module: str) -> set[str]:
        """Every module `module` imports, as absolute names; `from .x import y` counts as x.y when x.y is a
        module, else as x."""
        path = self.modules[module]
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        out = set()
        for node in ast.walk(self.trees(module)):
            if isinstance(node, ast.Import):
                out |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")
                base = base[:len(base) - node.level + 1] if node.level else []
                mod = ".".join(base + ([node.module] if node.module else []))
                for a in node.names:
                    full = f"{mod}.{a.name}"
                    out.add(full if full in self.modules else mod)
        return out

    def circles(self) -> list[list[str]]:
        """Every back edge of a depth-first search, as the circle it closes. The package root is left out: it
        imports its public names lazily (PEP 562), so importing it runs no submodule."""
        top = self.root.name
        state: dict[str, int] = {}
        stack: list[str] = []
        found = []

        def visit(m: str) -> None:
            state[m] = 1
            stack.append(m)
            for d in sorted(self.edges[m]):
                if d == top:
                    continue
                if state.get(d) == 1:
                    found.append(stack[stack.index(d):] + [d])
                elif d not in state:
                    visit(d)
            stack.pop()
            state[m] = 2

        for m in sorted(self.edges):
            if m not in state:
                visit(m)
        return found

    def private_imports(self, prefix: str) -> list[str]:
        """`from X import _name` across modules (X relative, or a module of `prefix`)."""
        bad = []
        for m in self.modules:
            for node in ast.walk(self.trees(m)):
                if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith(prefix)):
                    bad += [f"{m}: {a.name} from {node.module}" for a in node.names
                            if a.name.startswith("_") and not a.name.startswith("__")]
        return bad
