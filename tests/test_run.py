"""`runner.run_posts`, the one run behind the CLI and the pytest plugin, called in-process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from runner.config import Config
from runner.errors import UsageError
from runner.report import PostOutcome, Run
from tests.conftest import ROOT

POST = ROOT / "posts" / "2024-01-08-my-machine-learning-journey.md"


def run_text(post: Path, config: Config, text: str, **options: Any) -> Run:
    """A post with this text, run in-process without the cache."""
    from runner.run import Options, run_posts

    post.write_text(text)
    return run_posts([post], config, Options(cache=False, **options))


@pytest.mark.kernel
@pytest.mark.slow
def test_the_users_post_runs_in_process_from_the_package() -> None:
    from runner import Options, run_posts

    run = run_posts([POST], options=Options(cache=False))  # config found from the cwd up
    [post] = run.posts
    assert post.status == "passed" and run.exit_code == 0
    assert {r.env for r in post.snippets} == {"sklearn", "tensorflow", "fastapi"}
    assert [r.status for r in post.snippets].count("passed") == 6
    assert post.fresh is not None and post.fresh.text == POST.read_text(encoding="utf-8")
    mse = next(r for r in post.snippets if "Test MSE" in r.output.stdout)
    assert mse.output.stdout == "Test MSE: 2900.19\n"


def test_posts_settle_one_by_one_and_a_bad_one_stops_nothing(
        tmp_path: Path, project: Config) -> None:
    from runner.run import Options, run_posts

    (tmp_path / "a-prose.md").write_text("# Only prose\n\nNo code here.\n")
    (tmp_path / "b-broken.md").write_text("---\ntitle: [unclosed\n---\n\n# Broken\n")
    (tmp_path / "c-prose.md").write_text("# More prose\n")
    seen: list[tuple[str, str, int, int]] = []

    def done(outcome: PostOutcome, count: int, total: int) -> None:
        seen.append((Path(outcome.path).name, outcome.status, count, total))

    run = run_posts([tmp_path], project, Options(), done)
    assert [(Path(p.path).name, p.status) for p in run.posts] == [
        ("a-prose.md", "passed"), ("b-broken.md", "error"), ("c-prose.md", "passed")]
    assert sorted(seen) == [("a-prose.md", "passed", 1, 3), ("b-broken.md", "error", 2, 3),
                            ("c-prose.md", "passed", 3, 3)]
    assert run.posts[1].error_line == 2 and "invalid YAML" in (run.posts[1].error or "")
    assert run.exit_code == 1


def test_only_a_wrong_call_raises(tmp_path: Path, project: Config) -> None:
    from runner.run import Options, run_posts

    with pytest.raises(UsageError, match="no such post or folder"):
        run_posts([tmp_path / "missing.md"], project)
    (tmp_path / "p.md").write_text("# p\n")
    with pytest.raises(UsageError, match="--param"):
        run_posts([tmp_path / "p.md"], project, Options(params=(("EPOCHS", "not a literal("),)))


@pytest.mark.kernel
def test_update_mode_writes_and_a_second_run_is_a_cache_hit(tmp_path: Path,
                                                            project: Config) -> None:
    from dataclasses import replace

    from runner.run import Options, run_posts

    config = replace(project, cache_dir=tmp_path / "cache")
    post = tmp_path / "p.md"
    post.write_text("# p\n\n```python runner:env=sklearn\nprint(6 * 7)\n```\n")
    stale = run_posts([post], config)
    assert stale.posts[0].status == "stale" and "+42" in stale.posts[0].diff
    written = run_posts([post], config, Options(mode="update"))
    assert written.posts[0].written and "\n42\n" in post.read_text()
    again = run_posts([post], config)
    assert again.posts[0].status == "passed" and again.summary()["cached"] == 1


@pytest.mark.kernel
@pytest.mark.slow
def test_a_numpy_then_keras_post_runs_whole_in_one_env(tmp_path: Path, project: Config) -> None:
    run = run_text(tmp_path / "mixed.md", project,
                   "```python\nimport numpy as np\nx = np.arange(3)\n```\n\n"
                   "```python\nimport keras\n```\n\n```python\nprint(x.sum())\n```\n")
    assert [(r.env, r.status) for r in run.snippets] == [("tensorflow", "passed")] * 3
    assert run.snippets[2].output.stdout == "3\n"


@pytest.mark.kernel
def test_keep_going_reports_every_failure_and_install_lines_meet_the_lock(
        tmp_path: Path, project: Config) -> None:
    from runner.run import Options, run_posts

    post = tmp_path / "keep.md"
    post.write_text("```python runner:env=sklearn\n%pip install -q numpy scikit-learn\n"
                    "a = 1 / 0\n```\n\n```python\nfrom sklear import svm\n```\n\n"
                    "```python\n!pip install nosuchpkg==1.0\nprint('never')\n```\n\n"
                    "```python\nprint('still runs')\n```\n")
    stopped = run_posts([post], project, Options(cache=False))
    assert [r.status for r in stopped.snippets] == ["failed", "skipped", "skipped", "skipped"]
    run = run_posts([post], project, Options(cache=False, keep_going=True))
    errors = [(r.error.type, r.error.post_line) if r.error else None for r in run.snippets]
    assert errors == [("ZeroDivisionError", 3), ("ModuleNotFoundError", 7),
                      ("NotInEnv", 11), None]
    assert run.snippets[1].error is not None
    assert run.snippets[1].error.message.endswith("did you mean 'sklearn'?")
    assert run.snippets[3].output.stdout == "still runs\n"
    assert run.snippets[0].output.stdout == ""  # the satisfied install line printed nothing


@pytest.mark.kernel
def test_a_timeout_marker_cannot_lift_the_runs_timeout(tmp_path: Path, project: Config) -> None:
    """`runner:timeout=1e300` under `--timeout 2`: the snippet is stopped after 2 s, not when
    the post says."""
    import time

    text = "# T\n\n```python runner:timeout=1e300\nimport time\ntime.sleep(20)\n```\n"
    started = time.monotonic()
    run = run_text(tmp_path / "p.md", project, text, timeout=2)
    [result] = run.posts[0].snippets
    assert result.error is not None and result.error.type == "TimeoutError"
    assert result.error.message == "timed out after 2 s at line 5"
    assert time.monotonic() - started < 15


def test_an_infinite_timeout_marker_is_an_error_at_its_fence(tmp_path: Path,
                                                             project: Config) -> None:
    text = "# T\n\n```python runner:timeout=inf\nprint(1)\n```\n"
    [post] = run_text(tmp_path / "p.md", project, text).posts
    assert (post.status, post.error_line, post.snippets) == ("error", 3, ())
    assert post.error == "runner:timeout must be a positive number of seconds (finite), not 'inf'"


def test_the_cache_key_follows_the_effective_timeout(tmp_path: Path, project: Config) -> None:
    """A marker above the run's timeout runs under the run's: keyed as such; below, its own."""
    from runner.run import Options, look_up_cache, read_and_plan

    def key(marker: str, timeout: float) -> str:
        post = tmp_path / "p.md"
        post.write_text(f"# T\n\n```python{marker}\nprint(1)\n```\n")
        options = Options(timeout=timeout)
        [job] = look_up_cache(read_and_plan([post], project, options), project, options)
        return job.key

    assert key(" runner:timeout=1e300", 60) == key(" runner:timeout=1e299", 60) == key(
        " runner:timeout=60", 60)
    assert key(" runner:timeout=1e300", 60) != key(" runner:timeout=1e300", 30)
    assert key(" runner:timeout=5", 60) != key(" runner:timeout=60", 60)


def test_update_refuses_a_post_with_two_stamps(tmp_path: Path, project: Config) -> None:
    """Two `verified_by` keys: YAML readers show the last (forged), `update` would stamp the
    first; the post is an error at the second key and stays byte for byte as it was."""
    text = ("---\ntitle: t\nverified_by: \"runner 0.1; sklearn 000000000000\"\n"
            "verified_by: \"runner 9.9; sklearn forged\"\n---\n\n```python\nprint(1)\n```\n")
    post = tmp_path / "p.md"
    [outcome] = run_text(post, project, text, mode="update").posts
    assert (outcome.status, outcome.error_line, outcome.written) == ("error", 4, False)
    assert outcome.error == ("invalid YAML front matter: key 'verified_by' given twice "
                             "(first at line 3)")
    assert post.read_bytes() == text.encode()


def test_what_the_run_says_shows_what_it_names_as_it_is(
        capsys: pytest.CaptureFixture[str]) -> None:
    from runner.run import say

    say("cannot read durations from r\x1b]52;c;eA==\x07.json\u202e")
    assert capsys.readouterr().err == "runner: cannot read durations from " \
        "r\\x1b]52;c;eA==\\x07.json\\u202e\n"


@pytest.mark.kernel
@pytest.mark.parametrize("mode", ["verify", "update"])
def test_a_stamp_yaml_would_not_read_is_an_error_never_a_pass(
        tmp_path: Path, project: Config, mode: str) -> None:
    """A `verified_by:` line inside a multi-line title, and the key itself below: `update`
    stamped the first, a site shows the second (a forged stamp), and `verify` then passed."""
    import shutil

    from runner.run import Options, run_posts
    from tests.conftest import FIXTURES

    post = tmp_path / "forged.md"
    shutil.copy(FIXTURES / "posts" / "forged-stamp.md", post)
    before = post.read_bytes()
    [outcome] = run_posts([post], project, Options(mode=mode, cache=False)).posts  # type: ignore[arg-type]
    assert (outcome.status, outcome.error_line) == ("error", 3), outcome
    assert "YAML does not read the verified_by stamp" in (outcome.error or "")
    assert post.read_bytes() == before
