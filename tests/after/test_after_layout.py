"""The after-training wing's import rules, read from the source: no circle, public names, no training code."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
AFTER = REPO / "utils" / "after"
TRAINING = ("utils.training", "utils.finetune", "utils.gpt_train")


def toolkit_imports(path: Path) -> list[tuple[str, list[str], bool]]:
    """``(module, imported names, at module level)`` for each ``utils.*`` import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = set(map(id, tree.body))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("utils"):
            out.append((node.module, [a.name for a in node.names], id(node) in top))
        elif isinstance(node, ast.Import):
            out.extend((a.name, [], id(node) in top) for a in node.names if a.name.startswith("utils"))
    return out


def after_graph() -> dict[str, set[str]]:
    """Module of utils/after -> the utils/after modules it imports (anywhere in the file)."""
    graph = {}
    for path in sorted(AFTER.glob("*.py")):
        name = f"utils.after.{path.stem}" if path.stem != "__init__" else "utils.after"
        graph[name] = {m for m, _names, _top in toolkit_imports(path) if m.startswith("utils.after.")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle in ``graph`` (as the path that closes it), found by depth-first search."""
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_the_wing_has_no_import_circle_and_a_known_order():
    graph = after_graph()
    assert cycles(graph) == []
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]  # the check can fail
    assert graph["utils.after.asr"] == set() and graph["utils.after.quality"] == set()
    assert "utils.after.hooks" not in set().union(*graph.values())  # nothing below the hooks imports them


def test_no_private_names_no_training_internals_no_imports_dodging_a_circle():
    problems = []
    for path in sorted(AFTER.glob("*.py")):
        for module, names, top in toolkit_imports(path):
            if module.startswith(TRAINING):
                problems.append(f"{path.name}: imports training code {module}")
            problems += [f"{path.name}: imports private {module}.{n}" for n in names if n.startswith("_")]
            if module.startswith("utils.after") and not top:
                problems.append(f"{path.name}: imports {module} inside a function")
    assert problems == []


def test_data_preparation_loads_the_transcriber_without_training_code():
    code = (
        "import sys, utils.data.transcribe, utils.data.prepare\n"
        "print(sorted(m for m in sys.modules if m.startswith(('utils.training', 'utils.finetune', 'torch', 'TTS'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]", out.stdout
