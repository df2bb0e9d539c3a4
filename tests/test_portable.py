"""Output that reads the same on every machine: the pure rules, and a post verified on a
"second machine" (other cache folder, HOME, TMPDIR and checkout path) after `update` on a first."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runner.portable import Places, portable
from tests.conftest import FIXTURES, ROOT

PLACES = Places(post="posts/x.md", cells=(("/tmp/ipykernel_7/123.py", 10),),
                scratch="/tmp/run-a/session-b/runner-sklearn-c",
                env="/home/ann/.cache/runner/envs/sklearn-1117", python="/home/ann/.pyenv/3.11",
                home="/home/ann", tmp="/tmp")


@pytest.mark.parametrize(("seen", "recorded"), [
    ("/tmp/ipykernel_7/123.py:2: UserWarning: careful", "posts/x.md:12: UserWarning: careful"),
    ('  File "/tmp/ipykernel_7/123.py", line 3, in f', '  File "posts/x.md", line 13, in f'),
    ("/tmp/ipykernel_7/999.py:1: UserWarning: elsewhere", "<cell>:1: UserWarning: elsewhere"),
    ("/home/ann/.cache/runner/envs/sklearn-1117/lib/python3.11/site-packages/numpy/core/x.py:3:"
     " RuntimeWarning", "numpy/core/x.py:3: RuntimeWarning"),
    ("/home/ann/.cache/runner/envs/sklearn-1117", "<env>"),
    ("/home/ann/.cache/runner/envs/sklearn-1117/bin/python", "<env>/bin/python"),
    ("/home/ann/.pyenv/3.11/lib/python3.11/json/__init__.py", "<python>/lib/python3.11/json/"
     "__init__.py"),
    ("/tmp/run-a/session-b/runner-sklearn-c/data.csv", "./data.csv"),
    ("cwd: /tmp/run-a/session-b/runner-sklearn-c", "cwd: ."),
    ("/home/ann/notes.txt and /home/annex", "~/notes.txt and /home/annex"),
    ("/tmp/x and /tmpfs", "<tmp>/x and /tmpfs"),
    ("nothing local here: 0x7f, /usr/lib", "nothing local here: 0x7f, /usr/lib"),
])
def test_machine_local_places_are_replaced(seen: str, recorded: str) -> None:
    assert portable(seen, PLACES) == recorded


def test_the_post_itself_is_never_rewritten() -> None:
    places = Places(post="/tmp/blog/x.md", cells=(("/tmp/ipykernel_2/5.py", 4),), tmp="/tmp")
    assert portable("/tmp/ipykernel_2/5.py:1: W", places) == "/tmp/blog/x.md:5: W"


SECOND_MACHINE = """```python runner:env=sklearn
import os, sys, tempfile, warnings
import numpy as np
warnings.warn("careful")
np.mean([])
print(sys.prefix, os.getcwd(), os.path.expanduser("~"), tempfile.gettempdir())
print(os.path.abspath("data.csv"), sys.executable)
```
"""


def machine(base: Path, name: str) -> tuple[Path, dict[str, str]]:
    """A checkout of the project in a folder of its own, and an environment whose cache folder,
    HOME and TMPDIR are this machine's."""
    checkout = base / name / "blog"
    (checkout / "posts").mkdir(parents=True)
    shutil.copy(ROOT / "pyproject.toml", checkout)
    shutil.copytree(ROOT / "envs", checkout / "envs")
    for folder in ("home", "tmp", "runner-cache"):
        (base / name / folder).mkdir()
    return checkout, {**os.environ, "HOME": str(base / name / "home"),
                      "TMPDIR": str(base / name / "tmp"),
                      "RUNNER_CACHE_DIR": str(base / name / "runner-cache"),
                      "RUNNER_EXECUTION_CACHE": str(base / name / "exec-cache"),
                      "UV_CACHE_DIR": os.environ.get("UV_CACHE_DIR",
                                                     str(Path.home() / ".cache" / "uv"))}


@pytest.mark.kernel
@pytest.mark.slow
def test_what_one_machine_records_another_verifies(tmp_path: Path) -> None:
    first, first_env = machine(tmp_path, "first")
    second, second_env = machine(tmp_path, "second-machine")
    # The user's post (three envs, TensorFlow's twice) is recorded here and verified on each
    # CI machine by `nox -s verify-posts`: another machine for real. Here: the sklearn env.
    posts = {"paths.md": SECOND_MACHINE,
             "files.md": (FIXTURES / "hostile" / "writes-files.md").read_text()}
    for name, text in posts.items():
        (first / "posts" / name).write_text(text)
    shutil.copy(FIXTURES / "hostile" / "data.csv", first / "posts")
    run = [sys.executable, "-m", "runner"]
    updated = subprocess.run([*run, "update"], cwd=first, env=first_env, capture_output=True,
                             text=True, timeout=1200)
    assert updated.returncode == 0, updated.stdout + updated.stderr
    recorded = (first / "posts" / "paths.md").read_text()
    assert "<env> . ~ <tmp>" in recorded and "posts/paths.md:4: UserWarning: careful" in recorded
    assert "numpy/_core/fromnumeric.py" in recorded and str(tmp_path) not in recorded
    shutil.copytree(first / "posts", second / "posts", dirs_exist_ok=True)
    verified = subprocess.run([*run, "verify", "--no-cache"], cwd=second, env=second_env,
                              capture_output=True, text=True, timeout=1200)
    assert verified.returncode == 0, verified.stdout + verified.stderr


FIRST_STAMP = """---
title: A first stamp
---

```python runner:env=sklearn
import warnings
warnings.warn("careful")
```
"""


@pytest.mark.kernel
def test_a_first_stamp_moves_the_lines_the_output_names(tmp_path: Path, project) -> None:  # type: ignore[no-untyped-def]
    """The stamp a post gains on its first update is a line above every snippet: the warning
    recorded names the line `warnings.warn` has once written (8, not 7), so a run without the
    cache verifies what the first update wrote."""
    from dataclasses import replace

    from runner.run import Options, run_posts

    config = replace(project, cache_dir=tmp_path / "cache")
    post = tmp_path / "x.md"
    post.write_text(FIRST_STAMP)
    assert run_posts([post], config, Options(mode="update")).exit_code == 0
    text = post.read_text()
    line = text.splitlines().index('warnings.warn("careful")') + 1
    assert line == 8 and f"{post}:{line}: UserWarning: careful" in text, text
    again = run_posts([post], config, Options(cache=False))
    assert again.exit_code == 0, again.posts[0].diff
    # Prose above moves the snippet: the cache replays its output at the lines it has now.
    post.write_text(text.replace("\n```python", "\nTwo lines\nof prose.\n\n```python", 1))
    replayed = run_posts([post], config, Options(mode="update"))
    assert replayed.exit_code == 0 and replayed.snippets[0].cached
    moved = post.read_text()
    assert f"{post}:{line + 3}: UserWarning: careful" in moved  # three lines of prose above
    assert moved.splitlines()[line + 2] == 'warnings.warn("careful")'
    assert run_posts([post], config, Options(cache=False)).exit_code == 0
