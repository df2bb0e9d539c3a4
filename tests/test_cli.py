"""The command line end to end, as users and CI call it: real envs, kernels and posts."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import nbformat
import pytest

from tests.conftest import FIXTURES, ROOT, run_cli

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
def test_the_users_post_runs_in_three_envs_with_a_real_server(tmp_path: Path) -> None:
    """The user's post, its recorded output of the server and the model spoiled in a copy of
    posts/: an update (no cache) writes back what this run printed, which is the post as
    committed (the same on every machine: no branch on what a Keras cache holds)."""
    shutil.copytree(ROOT / "posts", tmp_path / "posts")
    copy = tmp_path / "posts" / POST.name
    recorded = POST.read_text()
    real = ("GET /health -> 200 {'status': 'healthy'}",
            "Architecture checked with random weights (the ImageNet weights are a down")
    spoiled = recorded
    for line in real:  # its last occurrence: in the output block, after the code printing it
        before, found, after = spoiled.rpartition(line)
        assert found
        spoiled = before + line.replace("e", "E") + after
    copy.write_text(spoiled)
    done = runner("update", copy, "--no-cache", "--report", tmp_path / "r.json",
                  "--junit-xml", tmp_path / "j.xml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{copy}: passed (output written)" in done.stdout
    assert copy.read_text() == recorded
    data = report(tmp_path / "r.json")
    assert data["summary"] == {"passed": 6, "failed": 0, "skipped": 1, "stale": 0, "cached": 0,
                               "posts": {"passed": 1, "failed": 0, "stale": 0, "error": 0}}
    [skipped] = [s for s in data["snippets"] if s["status"] == "skipped"]
    assert skipped["reason"] == "downloads the ImageNet weights: needs the network"
    assert {s["env"] for s in data["snippets"]} == {"sklearn", "tensorflow", "fastapi"}
    assert data["posts"][0]["path"] == str(copy)
    cases = list(ET.parse(tmp_path / "j.xml").getroot().iter("testcase"))
    snippet_cases = [c for c in cases if c.get("name") != "post"]
    assert [c.get("line") for c in snippet_cases] == [str(s["line"]) for s in data["snippets"]]
    assert [(c.get("classname"), len(c)) for c in cases if c.get("name") == "post"] == [
        (data["posts"][0]["path"], 0)]  # the post's own case, passed


@pytest.mark.kernel
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


@pytest.mark.kernel
def test_failing_post_is_not_written(tmp_path: Path) -> None:
    post = tmp_path / "fails.md"
    post.write_text("```python runner:env=sklearn\nprint('hi')\n```\n\n"
                    "```python\nraise ValueError('boom')\n```\n")
    before = post.read_bytes()
    done = runner("update", post)
    assert done.returncode == 1
    assert f"{post}:6: ValueError: boom" in done.stdout
    assert post.read_bytes() == before


@pytest.mark.kernel
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


def one_line_failure(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str]:
    """`main(argv)` in-process: its exit code and its stderr, which must be one line."""
    from runner.cli import main

    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return code, err


def tiny_project(folder: Path, requirements: str) -> Path:
    env = folder / "envs" / "tiny"
    env.mkdir(parents=True)
    (env / "requirements.in").write_text(requirements)
    (env / "requirements.lock").write_text("")
    (folder / "pyproject.toml").write_text("[tool.runner]\n")
    return folder


def test_every_command_fails_in_one_line_with_exit_1_or_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tiny_project(tmp_path, "this is ( not a requirement\n"))
    # uv cannot compile the lock: the env's fault, exit 1
    code, err = one_line_failure(capsys, ["envs", "lock", "tiny"])
    assert code == 1 and err.startswith("runner: ") and "pip compile failed" in err
    # a wrong name, a missing file: the command's fault, exit 2
    assert one_line_failure(capsys, ["envs", "lock", "nope"])[0] == 2
    code, err = one_line_failure(capsys, ["report", "merge", "missing.json", "--out", "m.json"])
    assert code == 2 and "missing.json" in err and "No such file" in err
    (tmp_path / "bad.json").write_text("{not json")
    assert one_line_failure(capsys, ["report", "merge", "bad.json", "--out", "m.json"])[0] == 2
    code, err = one_line_failure(capsys, ["sync", "missing.ipynb"])
    assert code == 2 and "missing.ipynb" in err
    assert one_line_failure(capsys, ["notebooks", "no-such-post.md"])[0] == 2
    assert one_line_failure(capsys, ["verify", "no-such-post.md"])[0] == 2
    (tmp_path / "broken.md").write_bytes(b"```python\nprint(1)\n")  # an unclosed fence
    code, err = one_line_failure(capsys, ["notebooks", "broken.md", "--out", "books"])
    assert code == 1 and err.startswith("broken.md:1: ")


@pytest.mark.kernel
def test_kernels_install_into_an_unwritable_folder_fails_in_one_line(
        built, tmp_path: Path, capsys: pytest.CaptureFixture[str],  # type: ignore[no-untyped-def]
        monkeypatch: pytest.MonkeyPatch) -> None:
    built("sklearn")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(blocker / "jupyter"))  # root ignores modes
    monkeypatch.chdir(ROOT)
    code, err = one_line_failure(capsys, ["kernels", "install", "sklearn"])
    assert code == 1 and "Not a directory" in err and str(blocker) in err


def test_merged_report_exit_code_follows_the_runs_rule(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from runner.cli import main

    def shard_report(name: str, post: str, snippet: str) -> Path:
        path = tmp_path / name
        path.write_text(json.dumps({
            "summary": {"passed": 0, "failed": int(snippet == "failed"), "skipped": 0,
                        "stale": int(post == "stale"), "cached": 0},
            "posts": [{"path": name, "status": post, "error": None, "error_line": None}],
            "snippets": [{"post": name, "line": 1, "status": snippet}]}))
        return path

    good = shard_report("a.json", "passed", "passed")
    assert main(["report", "merge", str(good), str(good), "--out", str(tmp_path / "m")]) == 0
    for post, snippet in (("stale", "passed"), ("failed", "failed"), ("error", "passed")):
        bad = shard_report("b.json", post, snippet)
        assert main(["report", "merge", str(good), str(bad), "--out", str(tmp_path / "m")]) == 1


@pytest.mark.parametrize("argv", [
    ["verify", "--jobs", "x"], ["verify", "--jobs", "0"], ["update", "--timeout", "soon"],
    ["verify", "--timeout", "inf"], ["verify", "--deadline", "1e400"],
    ["verify", "--shard", "3/2"], ["verify", "--no-such-option"], [], ["frobnicate"],
    ["envs", "frobnicate"], ["report", "merge", "a.json"]])
def test_usage_errors_are_one_line_naming_options_not_code(argv: list[str]) -> None:
    done = runner(*argv)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("runner: "), done.stderr
    assert "usage:" not in done.stderr and "_" not in lines[0], lines[0]
    assert lines[0].endswith("--help)") and "python -m runner" in lines[0]


def test_a_bad_option_value_names_the_option_and_the_value(
        capsys: pytest.CaptureFixture[str]) -> None:
    from runner.cli import main

    assert main(["verify", "--jobs", "x"]) == 2
    assert capsys.readouterr().err == ("runner: --jobs: must be a whole number of 1 or more, "
                                       "not 'x' (python -m runner verify --help)\n")
    assert main(["verify", "--no-such-option"]) == 2
    assert capsys.readouterr().err == ("runner: unrecognized arguments: --no-such-option "
                                       "(python -m runner verify --help)\n")
    assert main(["--version"]) == 0


def test_envs_lock_says_whether_the_lock_changed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from runner import envs
    from runner.cli import main

    monkeypatch.chdir(tiny_project(tmp_path, "iniconfig\n"))
    monkeypatch.setattr(envs, "compile_lock", lambda folder, upgrade, as_of=None: upgrade)
    assert main(["envs", "lock", "tiny"]) == 0
    assert capsys.readouterr().out.endswith("requirements.lock unchanged\n")
    assert main(["envs", "lock", "tiny", "--upgrade"]) == 0
    assert "requirements.lock updated: a new lock hash" in capsys.readouterr().out


def test_an_error_line_shows_what_a_post_name_holds_as_it_is(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A name with OSC 52 (a clipboard write), a colour and RLO in it: one line, each shown as
    its escape, none raw on the terminal."""
    import re

    monkeypatch.chdir(tiny_project(tmp_path, ""))
    name = "no\x1b]52;c;ZXZpbA==\x07such\x1b[32m\u202e.md"
    code, err = one_line_failure(capsys, ["verify", name])
    assert code == 2
    assert "no\\x1b]52;c;ZXZpbA==\\x07such\\x1b[32m\\u202e.md" in err
    assert re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202e]", err) is None
    (tmp_path / "bro\x1b[2Jken.md").write_bytes(b"```python\nprint(1)\n")  # an unclosed fence
    code, err = one_line_failure(capsys, ["notebooks", str(tmp_path), "--out", "books"])
    assert code == 1 and "bro\\x1b[2Jken.md:1: " in err and "\x1b" not in err
