"""The command line end to end, as users and CI call it: real envs, kernels and posts."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import nbformat
import pytest

from tests.conftest import FIXTURES, ROOT, run_cli

pytestmark = pytest.mark.kernel
PUBLISHED = FIXTURES / "posts" / "published" / "my-machine-learning-journey.md"
POST = ROOT / "posts" / "2024-01-08-my-machine-learning-journey.md"


runner = run_cli


def report(path: Path) -> dict:  # type: ignore[type-arg]
    return json.loads(path.read_text())


@pytest.mark.slow
def test_post_as_published_fails_at_the_missing_model_file(tmp_path: Path) -> None:
    done = runner("verify", PUBLISHED, "--no-cache", "--report", tmp_path / "r.json")
    assert done.returncode == 1, done.stdout + done.stderr
    data = report(tmp_path / "r.json")
    failed = [s for s in data["snippets"] if s["status"] == "failed"]
    assert len(failed) == 1
    assert failed[0]["env"] == "fastapi" and failed[0]["line"] == 125
    assert failed[0]["error"]["type"] == "FileNotFoundError"
    assert failed[0]["error"]["post_line"] == 132
    assert f"{PUBLISHED}:132: FileNotFoundError:" in done.stdout
    assert data["posts"] == [{"path": str(PUBLISHED), "status": "failed", "error": None,
                              "error_line": None}]


@pytest.mark.slow
def test_the_users_post_verifies_in_three_envs_with_a_real_server(tmp_path: Path) -> None:
    done = runner("verify", POST.relative_to(ROOT), "--no-cache", "--report", tmp_path / "r.json",
                  "--junit-xml", tmp_path / "j.xml")
    assert done.returncode == 0, done.stdout + done.stderr
    data = report(tmp_path / "r.json")
    assert data["summary"] == {"passed": 6, "failed": 0, "skipped": 0, "stale": 0, "cached": 0}
    assert {s["env"] for s in data["snippets"]} == {"sklearn", "tensorflow", "fastapi"}
    assert data["posts"][0]["path"] == "posts/2024-01-08-my-machine-learning-journey.md"
    text = POST.read_text()
    assert "GET /health -> 200 {'status': 'healthy'}" in text
    assert "ImageNet weights not available offline: architecture checked with random" in text
    cases = ET.parse(tmp_path / "j.xml").getroot().iter("testcase")
    assert [c.get("line") for c in cases] == [str(s["line"]) for s in data["snippets"]]


def test_update_round_trip_and_stale_detection(tmp_path: Path) -> None:
    post = tmp_path / "roundtrip.md"
    shutil.copy(FIXTURES / "posts" / "roundtrip.md", post)
    original = post.read_bytes()
    assert runner("verify", post).returncode == 1  # no output recorded yet: stale
    assert post.read_bytes() == original  # verify writes nothing

    done = runner("update", post)
    assert done.returncode == 0, done.stdout + done.stderr
    updated = post.read_text()
    assert "```text runner:output\n3\n```" in updated
    assert '  ```text runner:output\n  in a list\n  ```' in updated
    assert "> ```text runner:output\n> 42\n> ```" in updated
    assert updated.count("runner:output") == 3  # `y = 1` prints nothing: no block

    assert runner("update", post).returncode == 0
    assert post.read_text() == updated  # a second update changes nothing
    assert runner("verify", post).returncode == 0

    post.write_text(updated.replace("\n3\n", "\n4\n"))
    edited = post.read_bytes()
    stale = runner("verify", post, "--report", tmp_path / "r.json")
    assert stale.returncode == 1
    assert report(tmp_path / "r.json")["posts"][0]["status"] == "stale"
    assert "-4\n+3" in stale.stdout
    assert post.read_bytes() == edited


def test_failing_post_is_not_written(tmp_path: Path) -> None:
    post = tmp_path / "fails.md"
    post.write_text("```python runner:env=sklearn\nprint('hi')\n```\n\n"
                    "```python\nraise ValueError('boom')\n```\n")
    before = post.read_bytes()
    done = runner("update", post)
    assert done.returncode == 1
    assert f"{post}:6: ValueError: boom" in done.stdout
    assert post.read_bytes() == before


def test_bad_post_is_reported_and_the_others_still_run(tmp_path: Path) -> None:
    shutil.copy(FIXTURES / "posts" / "bad-front-matter.md", tmp_path / "a-bad.md")
    (tmp_path / "b-good.md").write_text("```python runner:env=sklearn\nprint(1)\n```\n")
    done = runner("verify", tmp_path, "--report", tmp_path / "r.json")
    assert done.returncode == 1
    posts = {Path(p["path"]).name: p for p in report(tmp_path / "r.json")["posts"]}
    assert posts["a-bad.md"]["status"] == "error" and posts["a-bad.md"]["error_line"] == 2
    assert "invalid YAML front matter" in posts["a-bad.md"]["error"]
    assert posts["b-good.md"]["status"] == "stale"  # it ran: its output is not recorded yet
    assert f"{tmp_path / 'a-bad.md'}:2: error: invalid YAML front matter" in done.stdout


def test_command_errors_exit_2(tmp_path: Path) -> None:
    assert runner("verify", "--no-such-option").returncode == 2
    missing = runner("verify", tmp_path / "missing.md")
    assert missing.returncode == 2 and "no such post or folder" in missing.stderr
    (tmp_path / "pyproject.toml").write_text("[tool.runner]\n[tool.runner.env.nope]\n")
    bad = runner("verify", cwd=tmp_path)
    assert bad.returncode == 2 and "[tool.runner.env.nope] names no folder" in bad.stderr


def test_envs_lists_each_env_with_its_lock_hash() -> None:
    done = runner("envs")
    assert done.returncode == 0
    names = [line.split()[0] for line in done.stdout.splitlines()]
    assert names == ["fastapi", "sklearn", "tensorflow"]
    assert all(" lock " in line for line in done.stdout.splitlines())


def test_notebooks_name_their_env(tmp_path: Path) -> None:
    done = runner("notebooks", POST.relative_to(ROOT), "--out", tmp_path)
    assert done.returncode == 0, done.stderr
    written = sorted(p.name for p in tmp_path.iterdir())
    stem = POST.stem
    assert written == sorted(f"{stem}.{env}.{ext}" for env in ("fastapi", "sklearn", "tensorflow")
                             for ext in ("ipynb", "py"))
    book = nbformat.read(tmp_path / f"{stem}.fastapi.ipynb", as_version=4)
    nbformat.validate(book)
    assert book.metadata.kernelspec.name == "runner-fastapi"
    assert "from typing import List" in "".join(c.source for c in book.cells)
