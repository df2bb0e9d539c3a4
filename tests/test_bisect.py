"""`bisect`, envs as of a date, and stamp-blind verify (the canary's).

The pure parts (which packages differ, which release to try next, what the answer says) are
tested without a registry. The rest is real: uv resolves against the registry, envs are built
into the env cache (reused from run to run), the posts run in real kernels; those tests are
marked `registry` and skip, saying why, where the registry cannot be reached.
"""

from __future__ import annotations

import json
import math
import shutil
from datetime import date
from pathlib import Path

import pytest
from packaging.version import Version

from runner import bisect, config, envs, report
from runner.bisect import Change, Limits, Trial
from runner.errors import EnvError
from runner.model import ErrorInfo, Markers, Snippet, SnippetResult
from runner.run import Options, run_posts
from tests.conftest import FIXTURES, run_cli
from tests.test_envs import registry  # noqa: F401 (the fixture)

PROJECT = FIXTURES / "bisect"
NP_INT = "posts/np-int.md"
SEABORN = "posts/seaborn-style.md"


# --- the pure parts ----------------------------------------------------------------------------


def test_changes_are_the_packages_whose_versions_differ() -> None:
    pinned = {"numpy": "1.23.5", "six": "1.16.0", "old": "1.0"}
    fresh = {"numpy": "2.1.0", "six": "1.16.0", "new": "0.1"}
    assert bisect.changes(pinned, fresh) == [
        Change("new", None, "0.1"), Change("numpy", "1.23.5", "2.1.0"), Change("old", "1.0", None)]


def test_the_packages_a_post_imports_are_tried_first() -> None:
    found = [Change("jedi", "1", "2"), Change("matplotlib", "3.6", "3.9"),
             Change("numpy", "1", "2")]
    ordered = bisect.in_order(found, ["numpy", "matplotlib", "pandas"])
    assert [c.package for c in ordered] == ["numpy", "matplotlib", "jedi"]
    codes = ["import sklearn\nfrom matplotlib import pyplot\nimport os, yaml"]
    assert bisect.distributions_imported(codes, {}) == ["scikit-learn", "matplotlib", "pyyaml"]
    assert bisect.distributions_imported(["import cv2"], {"cv2": "opencv-python"}) == [
        "opencv-python"]


def test_releases_between_are_final_and_in_the_direction_of_the_search() -> None:
    versions = ["1.23.4", "1.23.5", "1.24.0rc1", "1.24.0", "1.24.1", "1.25.0.dev0", "1.25.0",
                "2.0.0b1", "2.0.0", "not-a-version", "1.24.1"]
    assert bisect.releases_between(versions, "1.23.5", "2.0.0") == ["1.24.0", "1.24.1", "1.25.0"]
    assert bisect.releases_between(versions, "2.0.0", "1.23.5") == ["1.25.0", "1.24.1", "1.24.0"]
    assert bisect.releases_between(versions, "1.24.0", "1.24.1") == []


def test_next_probe_halves_and_steps_around_skipped_candidates() -> None:
    assert bisect.next_probe(0, 8, ()) == 4
    assert bisect.next_probe(0, 8, [4]) == 3  # the nearest to the middle, the lower first
    assert bisect.next_probe(0, 8, [3, 4]) == 5
    assert bisect.next_probe(3, 4, ()) is None
    assert bisect.next_probe(0, 3, [1, 2]) is None


def _search(count: int, first_bad: int, unbuildable: frozenset[int] = frozenset()) -> tuple[
        int, int, list[int], list[int]]:
    tried: list[int] = []

    def probe(index: int) -> Trial:
        tried.append(index)
        if index in unbuildable:
            return Trial(str(index), None, "no wheel for Python 3.11")
        return Trial(str(index), "failed" if index >= first_bad else "passed")

    lo, hi, _, skipped = bisect.search(Trial("0", "passed"), Trial(str(count - 1), "failed"),
                                       count, probe)
    return lo, hi, tried, skipped


@pytest.mark.parametrize("count", [2, 3, 5, 17, 40, 100])
def test_search_finds_the_first_release_with_the_newer_outcome_in_log2_tries(count: int) -> None:
    for first_bad in range(1, count):
        lo, hi, tried, skipped = _search(count, first_bad)
        assert (lo, hi, skipped) == (first_bad - 1, first_bad, [])
        assert len(tried) <= math.ceil(math.log2(count - 1)) if count > 2 else not tried


def test_search_skips_candidates_that_cannot_be_built_like_git_bisect_skip() -> None:
    lo, hi, tried, skipped = _search(11, 6, frozenset({5, 6}))
    assert (lo, hi) == (4, 7) and skipped == [5, 6]  # the culprit is one of 5, 6, 7
    lo, hi, tried, skipped = _search(11, 3, frozenset({5}))
    assert (lo, hi) == (2, 3) and 5 in tried and skipped == [5]


def _post(status: report.PostStatus, *results: SnippetResult, diff: str = "") -> report.PostOutcome:
    return report.PostOutcome("posts/x.md", status, snippets=results, diff=diff)


def test_an_outcome_is_judged_on_snippets_and_output() -> None:
    snippet = Snippet(path="posts/x.md", line=130, code="np.int", markers=Markers())
    error = ErrorInfo("AttributeError", "module 'numpy' has no attribute 'int'.\n`np.int` was "
                      "a deprecated alias", 139)
    failed = SnippetResult(snippet, "numpy", "failed", error=error)
    outcome, detail, line, info = bisect.outcome_of(_post("failed", failed))
    assert (outcome, line) == ("failed", 139)
    assert detail == "posts/x.md:139 AttributeError: module 'numpy' has no attribute 'int'."
    assert info is not None and info["post_line"] == 139
    diff = ("--- a\n+++ b\n@@ -20,3 +20,3 @@\n ```text runner:output\n-#EAEAF2 white\n"
            "+#eaeaf2 white\n")
    assert bisect.outcome_of(_post("stale", diff=diff))[:3] == (
        "stale", "posts/x.md:21 output differs: +#eaeaf2 white", 21)
    assert bisect.outcome_of(_post("passed"))[0] == "passed"
    with pytest.raises(bisect.PostError):
        bisect.outcome_of(report.PostOutcome("posts/x.md", "error", "bad front matter", 2))


def test_the_answer_is_one_line_a_maintainer_can_act_on() -> None:
    error = "posts/x.md:139 AttributeError: module 'numpy' has no attribute 'int'"
    lock = Trial("1.23.5", "passed")
    assert bisect.answer("posts/x.md", "numpy", lock, Trial("1.24.0", "failed", error), lock) == (
        "posts/x.md: passes with numpy 1.23.5, fails from numpy 1.24.0 (posts/x.md:139 "
        "AttributeError: module 'numpy' has no attribute 'int')")
    text = bisect.answer("posts/y.md", "matplotlib", Trial("3.7.5", "stale"),
                         Trial("3.8.0", "failed", "posts/y.md:12 OSError: ..."),
                         Trial("3.6.2", "passed"), [("3.7.6", "no wheel for Python 3.11")])
    assert text == ("posts/y.md: prints other output with matplotlib 3.7.5, fails from "
                    "matplotlib 3.8.0 (posts/y.md:12 OSError: ...); passes with the lock's "
                    "matplotlib 3.6.2; not tried between them: matplotlib 3.7.6 (no wheel for "
                    "Python 3.11)")


def test_bisect_results_in_json_annotations_and_step_summary() -> None:
    found = report.Bisected("posts/x.md", "numpy", "posts/x.md: passes with numpy 1.23.5, "
                            "fails from numpy 1.24.0 (...)", found=True, package="numpy",
                            good="1.23.5", bad="1.24.0", line=139, envs_built=6, envs_reused=1,
                            seconds=41.23)
    missed = report.Bisected("posts/y.md", "plots", "posts/y.md: gave up", seconds=3)
    [entry, _] = report.bisect_json([found, missed])
    assert {k: entry[k] for k in ("post", "package", "good", "bad", "envs_built", "seconds")} == {
        "post": "posts/x.md", "package": "numpy", "good": "1.23.5", "bad": "1.24.0",
        "envs_built": 6, "seconds": 41.2}
    lines = report.bisect_annotations([found, missed]).splitlines()
    assert lines[0].startswith("::error file=posts/x.md,line=139::bisect: posts/x.md: passes")
    assert lines[1].startswith("::warning file=posts/y.md,line=1::")
    summary = report.bisect_summary([found])
    assert "6 envs built, 1 reused, 41.2 s" in summary and "fails from numpy 1.24.0" in summary


def test_failing_posts_of_a_report_with_the_env_that_failed() -> None:
    data = {"posts": [{"path": "a.md", "status": "failed"}, {"path": "b.md", "status": "passed"},
                      {"path": "c.md", "status": "stale", "stamp_stale": False}],
            "snippets": [{"post": "a.md", "env": "sklearn", "status": "failed"}]}
    assert bisect.failing_posts(data) == [("a.md", "sklearn"), ("c.md", None)]


def test_as_of_dates_and_lock_options() -> None:
    assert envs.exclude_newer(date(2022, 12, 1)) == "2022-12-01T23:59:59Z"
    args = ["requirements.in", "--exclude-newer", "2020-01-01", "-o", "requirements.lock",
            "--exclude-newer=2021-01-01"]
    assert envs.without_option(args, "--exclude-newer") == [
        "requirements.in", "-o", "requirements.lock"]
    assert envs.option_value(["--python-version", "3.11"], "--python-version") == "3.11"
    assert envs.option_value(["--python-version=3.12"], "--python-version") == "3.12"
    uv_said = ("  ╰─▶ Because numpy==1.22.0 has no wheels with a matching Python ABI tag (e.g., "
               "`cp311`) and you require numpy==1.22.0, we can conclude ...")
    assert envs.no_wheel_message(uv_said, "3.11").startswith(
        "numpy 1.22.0 has no wheel for Python 3.11 (only a source distribution")


# --- the command line: usage errors exit 2, in one line ---------------------------------------


@pytest.mark.parametrize(("args", "said"), [
    (["envs", "lock", "numpy", "--as-of", "2022-13-01"], "--as-of: must be a date like"),
    (["envs", "lock", "numpy", "--as-of", "yesterday"], "--as-of: must be a date like"),
    (["envs", "new", "numpy2"], "envs new takes one new name and --from NAME"),
    (["envs", "new", "numpy", "--from", "plots"], "environment 'numpy' exists already"),
    (["envs", "new", "x/y", "--from", "plots"], "'x/y' cannot name an environment"),
    (["envs", "new", "x", "--from", "nope"], "unknown environment 'nope'"),
    (["envs", "build", "--as-of", "2022-12-01"], "--as-of for `envs lock` and `envs new`"),
    (["bisect"], "bisect takes one POST, or --from-report FILE"),
    (["bisect", "posts/missing.md"], "posts/missing.md: no such post"),
    (["bisect", NP_INT, "--env", "nope"], "unknown environment 'nope'"),
    (["bisect", "--from-report", "missing.json"], "cannot read the report"),
])
def test_usage_errors_exit_2_in_one_line(args: list[str], said: str) -> None:
    result = run_cli(*args, cwd=PROJECT)
    assert result.returncode == 2, result.stderr
    assert said in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert not (PROJECT / "envs" / "x").exists() and not (PROJECT / "envs" / "numpy2").exists()


def test_help_names_bisect_and_the_new_envs_options() -> None:
    assert "--package" in run_cli("bisect", "--help").stdout
    envs_help = run_cli("envs", "--help").stdout
    assert "--as-of" in envs_help and "--from" in envs_help
    assert "--ignore-stamps" in run_cli("verify", "--help").stdout


# --- real: the registry, uv, envs, kernels -----------------------------------------------------


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the fixture project, the current folder (envs are built into the shared env
    cache: a second run reuses every candidate)."""
    shutil.copytree(PROJECT, tmp_path / "project")
    monkeypatch.chdir(tmp_path / "project")
    return tmp_path / "project"


def _bound(package: str, good: str, bad: str, tried_packages: int) -> int:
    """What a bisect may build: the lock, the newest releases, one env per package tried,
    and log2 of the releases between."""
    versions = bisect.release_versions(package)
    count = len(bisect.releases_between(versions, good, bad)) + 2
    return 2 + tried_packages + math.ceil(math.log2(count))


@pytest.mark.registry
@pytest.mark.kernel
def test_np_int_bisects_to_numpy_1_24_0(registry: None, project: Path) -> None:  # noqa: F811
    found = bisect.bisect_post(NP_INT, config.load(project), limits=Limits(say=lambda _: None))
    assert found.found, found.answer
    assert (found.package, found.good, found.bad) == ("numpy", "1.23.5", "1.24.0")
    assert (found.good_outcome, found.bad_outcome, found.line) == ("passed", "failed", 14)
    assert found.answer == (f"{NP_INT}: passes with numpy 1.23.5, fails from numpy 1.24.0 "
                            f"({NP_INT}:14 AttributeError: module 'numpy' has no attribute 'int')")
    newest = max(bisect.releases_between(bisect.release_versions("numpy"), "1.23.5", "99"),
                 key=Version)
    tried = found.envs_built + found.envs_reused
    assert tried <= _bound("numpy", "1.23.5", newest, 1), found
    print(f"np.int: {report.bisect_cost(found)}")


@pytest.mark.registry
@pytest.mark.kernel
def test_seaborn_style_bisects_to_the_matplotlib_release_that_removed_it(
        registry: None, project: Path) -> None:  # noqa: F811
    found = bisect.bisect_post(SEABORN, config.load(project), limits=Limits(say=lambda _: None))
    assert found.found, found.answer
    assert (found.package, found.bad, found.bad_outcome) == ("matplotlib", "3.8.0", "failed")
    assert found.good is not None and found.good.startswith("3.7.")
    assert found.error is not None and found.error["type"] == "OSError"
    assert "'seaborn' is not a valid package style" in found.answer
    print(f"seaborn: {report.bisect_cost(found)}")


@pytest.mark.registry
@pytest.mark.kernel
def test_bisect_cli_prints_the_answer_and_its_cost_and_writes_the_report(
        registry: None, project: Path) -> None:  # noqa: F811
    result = run_cli("bisect", NP_INT, "--package", "numpy", "--report", "bisect.json",
                     cwd=project)
    assert result.returncode == 0, result.stderr
    first, cost = result.stdout.splitlines()
    assert first.startswith(f"{NP_INT}: passes with numpy 1.23.5, fails from numpy 1.24.0 (")
    assert cost.startswith(f"bisect: {NP_INT}: ") and " envs built, " in cost
    [entry] = json.loads((project / "bisect.json").read_text())["bisect"]
    assert (entry["good"], entry["bad"], entry["error"]["post_line"]) == ("1.23.5", "1.24.0", 14)
    assert entry["envs_built"] + entry["envs_reused"] >= 2 and entry["seconds"] > 0


@pytest.mark.registry
def test_envs_lock_as_of_takes_the_releases_of_that_day(
        registry: None, project: Path) -> None:  # noqa: F811
    folder = project / "envs" / "numpy"
    (folder / "requirements.lock").write_text("numpy==2.1.0\n")  # newer, and no header yet
    result = run_cli("envs", "lock", "numpy", "--as-of", "2022-12-01", cwd=project)
    assert result.returncode == 0, result.stderr
    assert "as of 2022-12-01" in result.stdout
    lock = (folder / "requirements.lock").read_text()
    assert config.lock_pins(lock)["numpy"] == "1.23.5"
    assert "--exclude-newer 2022-12-01T23:59:59Z" in lock.splitlines()[1]
    assert lock == (PROJECT / "envs" / "numpy" / "requirements.lock").read_text()
    # A later re-lock keeps the date its header records: the lock stays byte for byte.
    assert envs.compile_lock(folder) is False and envs.compile_lock(folder, upgrade=True) is False


@pytest.mark.registry
def test_as_of_a_day_without_wheels_for_this_python_says_so_and_leaves_the_lock(
        registry: None, project: Path) -> None:  # noqa: F811
    folder = project / "envs" / "numpy"
    before = (folder / "requirements.lock").read_bytes()
    with pytest.raises(EnvError) as caught:
        envs.compile_lock(folder, as_of=date(2022, 1, 10))
    assert "as of 2022-01-10: numpy 1.22.0 has no wheel for Python 3.11" in caught.value.message
    assert (folder / "requirements.lock").read_bytes() == before
    result = run_cli("envs", "new", "numpy-2021", "--from", "numpy", "--as-of", "2022-01-10",
                     cwd=project)
    assert result.returncode == 1 and "no wheel for Python 3.11" in result.stderr
    assert not (project / "envs" / "numpy-2021").exists()


@pytest.mark.registry
@pytest.mark.kernel
def test_an_env_made_as_of_a_date_runs_the_old_post(
        registry: None, project: Path) -> None:  # noqa: F811
    latest = project / "envs" / "latest"
    latest.mkdir()
    (latest / "requirements.in").write_text("numpy\nipykernel\n")
    envs.compile_lock(latest)
    assert config.lock_pins((latest / "requirements.lock").read_text())["numpy"] >= "2"
    result = run_cli("envs", "new", "numpy-2022", "--from", "latest", "--as-of", "2022-12-01",
                     cwd=project)
    assert result.returncode == 0, result.stderr
    assert "runner: {env: numpy-2022}" in result.stdout
    made = (project / "envs" / "numpy-2022" / "requirements.lock").read_text()
    assert config.lock_pins(made)["numpy"] == "1.23.5"
    post = project / NP_INT
    post.write_text(post.read_text().replace("{env: numpy}", "{env: numpy-2022}"))
    run = run_posts([NP_INT], config.load(project), Options(ignore_stamp=True, jobs=1))
    [outcome] = run.posts
    assert outcome.status == "passed", report.terminal(run)
    assert outcome.stamp_stale  # verified with env 'numpy': other lock, same output


@pytest.mark.registry
@pytest.mark.kernel
def test_verify_ignoring_stamps_reports_a_stamp_only_difference_apart(
        registry: None, project: Path) -> None:  # noqa: F811
    post = project / NP_INT
    text = post.read_text()
    post.write_text(text.replace('verified_by: "runner', 'verified_by: "runner 0.0.0; was'))
    strict = run_cli("verify", NP_INT, "--jobs", "1", cwd=project)
    assert strict.returncode == 1 and f"{NP_INT}: stale" in strict.stdout
    blind = run_cli("verify", NP_INT, "--jobs", "1", "--ignore-stamps", "--report", "r.json",
                    cwd=project)
    assert blind.returncode == 0, blind.stdout + blind.stderr
    assert "only its verified_by stamp names other locks" in blind.stdout
    [entry] = json.loads((project / "r.json").read_text())["posts"]
    assert entry["status"] == "passed" and entry["stamp_stale"] is True
    # An output that changed is still stale, and its diff has no stamp line in it.
    post.write_text(post.read_text().replace("[0 2 0] int64", "[0 2 1] int64"))
    changed = run_cli("verify", NP_INT, "--jobs", "1", "--ignore-stamps", cwd=project)
    assert changed.returncode == 1 and "-[0 2 1] int64" in changed.stdout
    assert "verified_by" not in changed.stdout


@pytest.mark.registry
@pytest.mark.kernel
def test_the_canary_flow_names_the_culprit_in_annotations_and_the_step_summary(
        registry: None, project: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    lock = project / "envs" / "numpy" / "requirements.lock"
    pinned = lock.read_text()
    # The canary's re-lock to the newest releases (this env's date taken out of its header).
    lock.write_text(pinned.replace(" --exclude-newer 2022-12-01T23:59:59Z", "", 1))
    assert envs.compile_lock(lock.parent, upgrade=True) is True
    canary = run_cli("verify", NP_INT, "--jobs", "1", "--ignore-stamps", "--report",
                     "canary.json", cwd=project)
    assert canary.returncode == 1 and "AttributeError" in canary.stdout
    lock.write_text(pinned)  # the workflow's `git checkout -- envs/`
    summary = project / "summary.md"
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    result = run_cli("bisect", "--from-report", "canary.json", "--time-limit", "600",
                     "--total-time-limit", "900", "--report", "bisect.json", cwd=project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (f"::error file={NP_INT},line=14::bisect: {NP_INT}: passes with numpy 1.23.5, "
            "fails from numpy 1.24.0 (") in result.stdout
    assert "| `posts/np-int.md` | posts/np-int.md: passes with numpy 1.23.5" in summary.read_text()
    written = json.loads((project / "bisect.json").read_text())
    assert written["posts"][0]["status"] == "failed"  # the verify report, kept
    assert written["bisect"][0]["bad"] == "1.24.0"
