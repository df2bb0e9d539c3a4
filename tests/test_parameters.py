"""Parameters (papermill's idea): declared in a post, overridden for a run, never written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.errors import UsageError
from runner.markdown import parse
from runner.notebooks import session_notebook
from runner.parameters import applicable, parse_overrides
from runner.plan import plan
from tests.conftest import run_cli
from tests.test_plan import ENVS

POST = """\
```python runner:parameters runner:env=sklearn
EPOCHS = 10
NAME: str = "full"
```

```python
assert EPOCHS == 10, f"ran with EPOCHS={EPOCHS}"
print(NAME)
```
"""


def test_overrides_must_be_literals() -> None:
    assert parse_overrides(["EPOCHS=1", "NAME='small'"]) == {"EPOCHS": "1", "NAME": "'small'"}
    for bad in ("EPOCHS", "1X=2", "EPOCHS=os.system('x')"):
        with pytest.raises(UsageError):
            parse_overrides([bad])


def test_only_declared_names_apply_and_are_injected_after_the_code() -> None:
    post = parse("p.md", POST)
    given = applicable(post, {"EPOCHS": "1", "ELSEWHERE": "2"})
    assert given == (("EPOCHS", "1"),)
    [session] = plan(post, ENVS)
    from dataclasses import replace

    cells = session_notebook(replace(session, overrides=given)).cells
    assert cells[0].source.startswith("EPOCHS = 10\nNAME: str = \"full\"\n")
    assert "\nEPOCHS = 1\n" in cells[0].source and cells[0].metadata.tags == ["parameters"]
    assert cells[1].source == post.snippets[1].code.rstrip("\n")


@pytest.mark.kernel
def test_a_run_with_parameters_uses_them_and_writes_nothing(tmp_path: Path) -> None:
    post = tmp_path / "p.md"
    post.write_text(POST)
    assert run_cli("update", post).returncode == 0
    recorded = post.read_text()
    small = run_cli("update", post, "--param", "EPOCHS=1", "--report", tmp_path / "r.json")
    assert small.returncode == 1  # the second snippet sees EPOCHS == 1
    assert "AssertionError: ran with EPOCHS=1" in small.stdout
    assert post.read_text() == recorded
    assert json.loads((tmp_path / "r.json").read_text())["posts"][0]["parameters"] == {
        "EPOCHS": "1"}
    named = run_cli("verify", post, "--param", "NAME='small'")
    assert named.returncode == 0 and "output not compared" in named.stdout
    assert run_cli("verify", post, "--param", "EPOCHS").returncode == 2
