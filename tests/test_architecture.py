"""docs/architecture.md stays true: its module table names every module of runner/ (and only
those), and its outline of the run is the code of `runner.run.async_run_posts`, in order."""

from __future__ import annotations

import inspect
import re

from runner import run
from tests.conftest import ROOT

DOC = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")


def test_the_module_table_names_every_module_and_no_other() -> None:
    rows = [line for line in DOC.splitlines() if line.startswith("| ") and "`" in line]
    named = {name for row in rows for name in re.findall(r"`([a-z_]+\.py)`", row.split("|")[2])}
    modules = {path.name for path in (ROOT / "runner").glob("*.py")} - {"__init__.py"}
    assert named == modules, (sorted(modules - named), sorted(named - modules))


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
