"""The package's structure: imports flow one way (schedule -> step math -> solvers -> sampler -> generate /
evaluation -> commands), with no cycle, no command module loaded by the library, no sys.path edits."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ddim"


def _modules() -> dict[str, Path]:
    mods = {}
    for p in PACKAGE.rglob("*.py"):
        name = ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = p
    return mods


def _imports() -> dict[str, set[str]]:
    """module -> the package modules it imports anywhere in its file (function-level imports included)."""
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ddim":
                deps.add(node.module)
                deps |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in mods}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.split(".")[0] == "ddim"}
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def _closure(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for d in graph[todo.pop()]:
            if d not in seen:
                seen.add(d)
                todo.append(d)
    return seen


def test_there_is_no_import_cycle():
    graph = _imports()
    for name in graph:
        assert name not in _closure(graph, name), f"{name} imports itself through {sorted(_closure(graph, name))}"


@pytest.mark.parametrize("lower, higher", [
    ("ddim.schedule", ("ddim.sampling", "ddim.generate", "ddim.evaluation", "ddim.commands", "ddim.models")),
    ("ddim.models", ("ddim.schedule", "ddim.sampling", "ddim.generate", "ddim.evaluation", "ddim.commands")),
    ("ddim.sampling", ("ddim.generate", "ddim.evaluation", "ddim.train", "ddim.commands", "ddim.config",
                       "ddim.checkpoint", "ddim.models")),
    ("ddim.predictions", ("ddim.sampling", "ddim.models", "ddim.checkpoint", "ddim.config", "ddim.train")),
    ("ddim.checkpoint", ("ddim.sampling", "ddim.config", "ddim.generate", "ddim.evaluation", "ddim.train",
                         "ddim.commands")),
    ("ddim.images", ("ddim.data", "ddim.generate", "ddim.evaluation", "ddim.commands")),
    ("ddim.generate", ("ddim.evaluation", "ddim.commands")),
    ("ddim.evaluation", ("ddim.commands",)),
    ("ddim.train", ("ddim.commands", "ddim.generate", "ddim.evaluation", "ddim.distill")),
    ("ddim.distill", ("ddim.commands", "ddim.evaluation")),
])
def test_layers_import_one_way(lower, higher):
    graph = _imports()
    for name in [m for m in graph if m == lower or m.startswith(lower + ".")]:
        bad = sorted(d for d in _closure(graph, name) if any(d == h or d.startswith(h + ".") for h in higher))
        assert not bad, f"{name} reaches {bad}"


def test_only_the_commands_import_the_commands():
    graph = _imports()
    for name, deps in graph.items():
        if not name.startswith("ddim.commands") and name != "ddim.__main__":     # `python -m ddim` is the CLI
            assert not [d for d in deps if d.startswith("ddim.commands")], name


def test_import_ddim_loads_no_command_module():
    code = "import sys, ddim; print(sorted(m for m in sys.modules if m.startswith('ddim.commands')))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"


def test_no_module_edits_sys_path():
    for path in _modules().values():
        assert "sys.path" not in path.read_text(), path
