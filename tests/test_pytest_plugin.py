"""The pytest plugin, run as a user runs it: `pytest -p runner.pytest_plugin --run-posts` in a
project of its own (pytester), whose `[tool.runner]` uses this project's envs."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner import envs
from tests.conftest import run_cli

pytest_plugins = ["pytester"]

ENVS = Path(__file__).resolve().parent.parent / "envs"
# pytester points HOME at its own folder: keep finding the envs already built under the real one.
CACHE_ROOT = envs.cache_root()
PLUGIN = ("-p", "runner.pytest_plugin")


def block(text: str) -> str:
    """A verified output block as `update` writes it."""
    return (f"\n*Verified output:*\n\n```text runner:output\n{text}\n```\n\n"
            "[//]: # (end of verified output)\n")


def fence(code: str, markers: str = "") -> str:
    return f"```python runner:env=sklearn{markers}\n{code}\n```\n"


FRESH = ("# Fresh\n\n" + fence("print(6 * 7)") + block("42") + "\n"
         + fence("import urllib.request", ' runner:skip="needs network"'))
FAILING = ("# Failing\n\n" + fence("x = 1") + "\n"  # fence at line 3
           + fence("y = undefined_name") + "\n"  # fence at line 7, the error at line 8
           + fence("print(x)"))  # line 11: not run
STALE = ("# Stale\n\n" + fence("print(6 * 7)") + block("41") + "\n"
         + fence("import urllib.request", ' runner:skip="needs network"'))
# Not a post (not under posts/, not named): never collected, though it would fail.
README = "# Project\n\n```python\nraise SystemExit('a README is not a post')\n```\n"


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("RUNNER_CACHE_DIR", str(CACHE_ROOT))
    pytester.makefile(".toml", pyproject=f'[tool.runner]\nenvs = "{ENVS}"\ntimeout = 120\n')
    pytester.makefile(".md", README=README)
    (pytester.path / "posts").mkdir()
    return pytester


def write(pytester: pytest.Pytester, **posts: str) -> None:
    for name, text in posts.items():
        (pytester.path / "posts" / f"{name}.md").write_text(text, encoding="utf-8")


@pytest.mark.kernel
def test_each_snippet_passes_fails_or_skips_with_the_runners_line(
        project: pytest.Pytester) -> None:
    write(project, fresh=FRESH, failing=FAILING)
    result = project.runpytest(*PLUGIN, "--run-posts", "-v", "-rs")
    result.assert_outcomes(passed=2, failed=1, skipped=2)
    result.stdout.fnmatch_lines_random([
        "posts/failing.md::line-3 PASSED*",
        "posts/failing.md::line-7 FAILED*",
        "posts/failing.md::line-11 SKIPPED (not run: the snippet at line 7*",
        "posts/fresh.md::line-3 PASSED*",
        "posts/fresh.md::line-15 SKIPPED (needs network)*",
    ])
    # The failure section: headed by reportinfo, then the runner's line and the traceback.
    result.stdout.fnmatch_lines([
        "*_ posts/failing.md:7 [[]sklearn[]] _*",
        "posts/failing.md:8: NameError: name 'undefined_name' is not defined",
        "*NameError*",
    ])
    result.stdout.fnmatch_lines_random([
        "SKIPPED [[]1[]] posts/failing.md:11: not run: the snippet at line 7 failed",
        "SKIPPED [[]1[]] posts/fresh.md:15: needs network",
    ])
    assert "README" not in result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED


@pytest.mark.kernel
def test_stale_recorded_output_fails_the_last_item_and_writes_nothing(
        project: pytest.Pytester) -> None:
    write(project, stale=STALE)
    result = project.runpytest(*PLUGIN, "--run-posts", "-v", "posts/")
    # Its last snippet is skipped on purpose: the stale post still fails there.
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "posts/stale.md::line-3 PASSED*",
        "posts/stale.md::line-15 FAILED*",
        "posts/stale.md: recorded output is stale: run `nox -s update-posts`",
        "*posts/stale.md (recorded)*",
        "*posts/stale.md (fresh run)*",
        "-41",
        "+42",
    ])
    assert (project.path / "posts" / "stale.md").read_text(encoding="utf-8") == STALE


FIGURE = ("---\ntitle: A figure\n---\n\n" + fence(
    "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()\nprint('drawn')"))


@pytest.mark.kernel
def test_what_update_writes_is_fresh_stamp_and_figures_included(
        project: pytest.Pytester) -> None:
    write(project, figure=FIGURE)
    updated = run_cli("update", "posts/", "--no-cache", cwd=project.path)
    assert updated.returncode == 0, updated.stdout + updated.stderr
    text = (project.path / "posts" / "figure.md").read_text(encoding="utf-8")
    assert "verified_by:" in text and "figure/snippet-1-figure-1.png" in text
    project.runpytest(*PLUGIN, "--run-posts").assert_outcomes(passed=1)
    # A figure gone is stale, as `verify` says.
    (project.path / "posts" / "figure" / "snippet-1-figure-1.png").unlink()
    result = project.runpytest(*PLUGIN, "--run-posts")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["posts/figure.md: recorded output is stale*",
                                 "figure posts/figure/snippet-1-figure-1.png: missing"])


def test_a_post_that_cannot_be_planned_is_one_failing_item(project: pytest.Pytester) -> None:
    write(project, bad="# Bad\n\n```python runner:env=nope\nx = 1\n```\n")
    result = project.runpytest(*PLUGIN, "--run-posts", "-v")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["posts/bad.md::error FAILED*",
                                 "posts/bad.md:3: unknown environment 'nope' (known: *)"])


def test_markdown_is_collected_only_with_run_posts(project: pytest.Pytester) -> None:
    write(project, failing=FAILING)
    without = project.runpytest(*PLUGIN, "posts/")
    assert without.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    # With it: the posts folder, and a Markdown file named on the command line.
    listed = project.runpytest(*PLUGIN, "--run-posts", "--collect-only", "-q",
                               "README.md", "posts/")
    listed.stdout.fnmatch_lines(["README.md::line-3", "posts/failing.md::line-3",
                                 "posts/failing.md::line-7", "posts/failing.md::line-11",
                                 "4 tests collected*"])


def test_run_posts_without_a_runner_project_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makefile(".md", post="```python\nx = 1\n```\n")
    result = pytester.runpytest(*PLUGIN, "--run-posts", "post.md")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*runner: no pyproject.toml with [[]tool.runner[]]*"])


def _comparable(report_path: Path) -> dict:  # type: ignore[type-arg]
    """A JSON report without what differs from run to run (durations)."""
    import json

    data = json.loads(report_path.read_text(encoding="utf-8"))
    for snippet in data["snippets"]:
        snippet.pop("duration_s")
    return data  # type: ignore[no-any-return]


@pytest.mark.kernel
def test_the_plugin_and_the_cli_give_the_same_result_cached_or_not(
        project: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNNER_EXECUTION_CACHE", str(tmp_path / "cache"))  # empty at first
    write(project, fresh=FRESH, failing=FAILING, stale=STALE)
    reports = {}
    for attempt, plugin_flags, cli_flags in (("cold", ["--runner-no-cache"], ["--no-cache"]),
                                             ("cached", [], [])):
        plugin = tmp_path / f"plugin-{attempt}.json"
        project.runpytest(*PLUGIN, "--run-posts", "--runner-report", str(plugin), *plugin_flags)
        cli = tmp_path / f"cli-{attempt}.json"
        run_cli("verify", "posts/", "--report", cli, *cli_flags, cwd=project.path)
        reports[attempt] = _comparable(plugin), _comparable(cli)
    cold_plugin, cold_cli = reports["cold"]
    assert cold_plugin == cold_cli
    assert cold_plugin["summary"] == {"passed": 3, "failed": 1, "skipped": 3, "stale": 1,
                                      "cached": 0, "posts": {"passed": 1, "failed": 1,
                                                             "stale": 1, "error": 0}}
    cached_plugin, cached_cli = reports["cached"]
    assert cached_plugin == cached_cli
    # The cold runs filled the cache: the fresh and stale posts' sessions come from it (a
    # failing session is never stored), in the plugin's second run as in the CLI's.
    assert cached_plugin["summary"]["cached"] == 4
    assert [p["status"] for p in cached_plugin["posts"]] == ["failed", "passed", "stale"]


@pytest.mark.kernel
def test_the_plugin_passes_parameters_as_the_cli_does(project: pytest.Pytester) -> None:
    post = ("# Params\n\n" + fence("EPOCHS = 10", " runner:parameters") + "\n"
            + fence("assert EPOCHS == 1, EPOCHS"))
    write(project, params=post)
    project.runpytest(*PLUGIN, "--run-posts").assert_outcomes(failed=1, passed=1)
    project.runpytest(*PLUGIN, "--run-posts", "--runner-param", "EPOCHS=1").assert_outcomes(
        passed=2)


def test_a_failure_shows_what_a_kernel_sent_as_it_is() -> None:
    """pytest prints a failure's line and details to the terminal: a kernel's colours and OSC
    52 in them are shown as escapes, the traceback keeps its lines."""
    from runner.pytest_plugin import RunnerFailure

    failure = RunnerFailure("posts/x.md:3: ValueError: \x1b[32mPASSED\x1b[0m\u202e",
                            "Traceback\n  \x1b]52;c;ZXZpbA==\x07\n")
    assert str(failure) == "posts/x.md:3: ValueError: \\x1b[32mPASSED\\x1b[0m\\u202e"
    assert failure.report().endswith("\n\nTraceback\n  \\x1b]52;c;ZXZpbA==\\x07")
    assert "\x1b" not in failure.report() and "\x07" not in failure.report()
