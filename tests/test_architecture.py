"""docs/architecture.md stays true: its module table names every module of runner/ (and only
those), and its outline of the run is the code of `runner.run.async_run_posts`, in order."""

from __future__ import annotations

import ast
import inspect
import re

from runner import run
from tests.conftest import ROOT

DOC = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")


def table() -> list[str]:
    """The modules of the table's rows, in the table's order (`run.py`, ...)."""
    rows = [line for line in DOC.splitlines() if line.startswith("| ") and "`" in line]
    return [name for row in rows for name in re.findall(r"`([a-z_]+\.py)`", row.split("|")[2])]


def test_the_module_table_names_every_module_and_no_other() -> None:
    named = table()
    modules = {path.name for path in (ROOT / "runner").glob("*.py")} - {"__init__.py"}
    assert sorted(named) == sorted(modules), (sorted(modules - set(named)),
                                              sorted(set(named) - modules))


def imported(module: str) -> set[str]:
    """The runner modules `module` imports, at its top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse((ROOT / "runner" / module).read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("runner"):
            found |= ({f"{alias.name}.py" for alias in node.names} if node.module == "runner"
                      else {f"{(node.module or '').split('.')[1]}.py"})
        elif isinstance(node, ast.Import):
            found |= {f"{alias.name.split('.')[1]}.py" for alias in node.names
                      if alias.name.startswith("runner.")}
    return found - {module}


def test_each_module_imports_only_those_above_it_in_the_table() -> None:
    order = table()
    above: set[str] = set()
    for module in order:
        below = (imported(module) & set(order)) - above
        assert not below, f"{module} imports {sorted(below)}, not above it in the table"
        above.add(module)


def outline() -> list[str]:
    """The code lines of the doc's outline of the run, comments and blank lines left out."""
    block = DOC.split("The run (`runner.run.async_run_posts`)", 1)[1].split("```python\n", 1)[1]
    code = block.split("```", 1)[0]
    lines = [line.split("  #")[0].strip() for line in code.splitlines()]
    return [line for line in lines if line]


def test_the_run_outline_is_the_runs_code_in_order() -> None:
    source = [line.split("  #")[0].strip()
              for line in inspect.getsource(run.async_run_posts).splitlines()]
    lines = outline()
    assert len(lines) >= 8
    at = 0
    for line in lines:
        assert line in source[at:], f"not in async_run_posts (in this order): {line}"
        at = source.index(line, at) + 1


def test_each_stage_the_outline_calls_is_a_function_of_the_run() -> None:
    called = {name for line in outline() for name in re.findall(r"\b([a-z_]+)\(", line)}
    missing = {name for name in called - {"any", "backend", "entry"} if not hasattr(run, name)}
    assert not missing and {"read_and_plan", "look_up_cache", "execute", "conclude"} <= called
