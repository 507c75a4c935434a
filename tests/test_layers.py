"""Imports flow one way (issue 18): layers, no cycles, no borrowed private names, few local imports.

Every module of ``tomochunk/`` is read with ``ast`` (nothing is imported), module-level and
function-level imports alike, relative imports resolved.
"""

import ast
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent / "tomochunk"

#: Modules that may forward names lazily through ``importlib.import_module("...")`` strings
#: (old import paths of functions that moved to a higher layer).
SHIMS = {"tomochunk", "tomochunk.ops.tirf", "tomochunk.ops.pick", "tomochunk.pipeline", "tomochunk.workflows",
         "tomochunk.nn", "tomochunk.nn.segment", "tomochunk.nn.features", "tomochunk.io.objects"}
LEVEL0 = {"errors", "_log", "_lazy", "_names", "_blocks", "_geometry", "_schema", "parallel"}
#: layer -> the layers it may import (level 0 and itself always allowed)
ALLOWED = {0: {0}, 1: {0, 1}, 2: {0, 1, 2}, 3: {0, 1, 2, 3}, 4: {0, 1, 2, 3, 4}, 5: {0, 1, 2, 3, 4, 5},
           6: {0, 1, 2, 3, 4, 5, 6}}
LOCAL_BUDGET = 6.0  # function-local imports per 1,000 lines, outside cli.py
MAX_LINES = 700
LONG_OK = {"tomochunk.cli", "tomochunk.phantom"}
def _modname(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_modname(p): p for p in sorted(ROOT.rglob("*.py"))}


def layer(mod: str) -> int:
    parts = mod.split(".")
    if mod == "tomochunk" or parts[1:2] == ["cli"] or parts[1:2] == ["targets"] or parts[1:2] == ["pipeline"]:
        return 6  # the CLI, the lazy top-level table and compat shims
    top = parts[1]
    if top in LEVEL0:
        return 0
    return {"io": 1, "ops": 2, "phantom": 3, "viz": 3, "nn": 4, "workflows": 5}.get(top, 6)


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _target(name: str) -> str:
    """The tomochunk module an imported dotted name lives in (longest known prefix)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in MODULES:
            return ".".join(parts[:i])
    return ""


def imports(mod: str):
    """(target module, imported names, line, function-local?) for each tomochunk import of ``mod``."""
    path = MODULES[mod]
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    out = []

    def visit(node, local):
        for child in ast.iter_child_nodes(node):
            inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for a in child.names:
                    if a.name.startswith("tomochunk"):
                        out.append((_target(a.name), [], child.lineno, local))
            elif isinstance(child, ast.ImportFrom):
                base = _resolve(mod, is_pkg, child)
                if base.startswith("tomochunk"):
                    for a in child.names:
                        sub = f"{base}.{a.name}"
                        if sub in MODULES:  # "from . import _cache": the submodule itself
                            out.append((sub, [], child.lineno, local))
                        else:
                            out.append((_target(base), [a.name], child.lineno, local))
            visit(child, inner)

    visit(tree, False)
    return out


def lazy_strings(mod: str):
    """``importlib.import_module("tomochunk...")`` calls with a literal string."""
    tree = ast.parse(MODULES[mod].read_text())
    found = []
    for n in ast.walk(tree):
        if (isinstance(n, ast.Call) and getattr(n.func, "attr", getattr(n.func, "id", "")) == "import_module"
                and n.args and isinstance(n.args[0], ast.Constant) and str(n.args[0].value).startswith("tomochunk")):
            found.append((n.args[0].value, n.lineno))
    return found


def test_imports_follow_the_layers():
    bad = []
    for mod in MODULES:
        for target, _, line, _ in imports(mod):
            if target and target != mod and layer(target) not in ALLOWED[layer(mod)]:
                bad.append(f"{MODULES[mod].relative_to(ROOT.parent)}:{line}: {mod} (layer {layer(mod)}) imports "
                           f"{target} (layer {layer(target)})")
    assert not bad, "\n".join(bad)


def test_lazy_forwards_only_in_shims():
    bad = [f"{MODULES[m].relative_to(ROOT.parent)}:{line}: import_module({s!r}) outside SHIMS"
           for m in MODULES if m not in SHIMS for s, line in lazy_strings(m)]
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    graph = {m: {t for t, _, _, local in imports(m) if t and t != m and not local} for m in MODULES}
    cycles, state = [], {}

    def dfs(m, stack):
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif not state.get(t):
                dfs(t, stack)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if not state.get(m):
            dfs(m, [])
    assert not cycles, "\n".join(cycles)


def _designated_private(mod: str) -> bool:
    return mod.split(".")[-1].startswith("_") and mod.split(".")[-1] != "__init__"


def test_no_private_names_from_siblings():
    bad = []
    for mod in MODULES:
        for target, names, line, _ in imports(mod):
            if not target or _designated_private(target) or target == "tomochunk":
                continue
            for n in names:
                if n.startswith("_") and not n.startswith("__"):
                    bad.append(f"{MODULES[mod].relative_to(ROOT.parent)}:{line}: {n} from {target}")
    assert not bad, "\n".join(bad)


def _local_imports(path: Path) -> int:
    tree = ast.parse(path.read_text())
    count = 0

    def visit(node, local):
        nonlocal count
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)) and local:
                count += 1
            visit(child, local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    visit(tree, False)
    return count


def test_function_local_imports_within_budget():
    files = [p for m, p in MODULES.items() if m != "tomochunk.cli"]
    n_local = sum(_local_imports(p) for p in files)
    n_lines = sum(len(p.read_text().splitlines()) for p in files)
    rate = 1000 * n_local / n_lines
    worst = sorted(((_local_imports(p), p.relative_to(ROOT.parent)) for p in files), reverse=True)[:8]
    print(f"function-local imports outside cli.py: {n_local} in {n_lines} lines = {rate:.1f} per 1,000 "
          f"(budget {LOCAL_BUDGET}); most: {worst}")
    assert rate <= LOCAL_BUDGET, f"{rate:.1f} local imports per 1,000 lines; most: {worst}"


def test_no_file_over_700_lines():
    long = {str(p.relative_to(ROOT.parent)): n for m, p in MODULES.items()
            if m not in LONG_OK and (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_workflows_follow_the_rules():
    """The workflows layer itself, already clean on this branch: no upward import, no borrowed private name."""
    for mod in MODULES:
        if not mod.startswith("tomochunk.workflows"):
            continue
        for target, names, line, _ in imports(mod):
            assert layer(target) <= 5, (mod, target, line)
            if not _designated_private(target):
                assert not [n for n in names if n.startswith("_") and not n.startswith("__")], (mod, target, line)
        assert len(MODULES[mod].read_text().splitlines()) <= MAX_LINES, mod
