"""The shape of the package, read from its source: sizes a reader can hold, and imports that flow one way.

- no function in utils/ is over 60 lines and no class over 400 (decorators and docstrings count);
- no import circle between the modules of utils/ (imports inside functions count too: a circle
  hidden in a function body is still a circle; names imported under ``if TYPE_CHECKING:`` only
  annotate, so they do not count);
- data preparation, language support and the hyperparameter table import no training code.
"""

from __future__ import annotations

import ast
from pathlib import Path

UTILS = Path(__file__).resolve().parents[1] / "utils"
MAX_FUNCTION_LINES = 60
MAX_CLASS_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(UTILS.rglob("*.py")):
        parts = path.relative_to(UTILS.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _span(node: ast.AST) -> int:
    first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
    return node.end_lineno - first + 1


def test_no_function_over_60_lines_and_no_class_over_400():
    too_long = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _span(node) > MAX_FUNCTION_LINES:
                too_long.append(f"{name}.{node.name}: {_span(node)} lines (function)")
            elif isinstance(node, ast.ClassDef) and _span(node) > MAX_CLASS_LINES:
                too_long.append(f"{name}.{node.name}: {_span(node)} lines (class)")
    assert not too_long, "split these into named steps or parts:\n" + "\n".join(too_long)


def _type_checking_blocks(tree: ast.AST) -> list[ast.If]:
    """The ``if TYPE_CHECKING:`` blocks of a module."""
    return [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.If)
        and (getattr(n.test, "id", None) == "TYPE_CHECKING" or getattr(n.test, "attr", None) == "TYPE_CHECKING")
    ]


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the utils modules it imports (at any depth of its body), resolved to known modules."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        package = name if is_package else name.rpartition(".")[0]
        found: set[str] = set()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        typing_only = {id(n) for block in _type_checking_blocks(tree) for stmt in block.body for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):
                    found.add(target)
        graph[name] = found
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circle_between_modules():
    cycles = _cycles(_imports(_modules()))
    assert cycles == [], f"import circles: {cycles}"


def test_the_cycle_finder_sees_a_circle_made_inside_a_function():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_data_language_and_hparams_import_no_training_code():
    graph = _imports(_modules())
    low = [m for m in graph if m.startswith(("utils.data", "utils.language")) or m == "utils.hparams"]
    bad = {m: sorted(t for t in graph[m] if t.startswith(("utils.training", "utils.finetune"))) for m in low}
    assert not any(bad.values()), {m: t for m, t in bad.items() if t}
