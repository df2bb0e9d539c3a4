"""The execution cache: keys, corrupt entries, and hits that start nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from runner import cache, codec, envs
from runner.config import Config
from runner.errors import EnvError
from runner.markdown import parse
from runner.model import EnvSpec, Output, Part, SnippetResult
from runner.plan import plan
from runner.report import Run, to_json
from runner.run import Options, run_posts
from tests.conftest import spec, without_waiting

ENV = spec("sklearn", "numpy")
POST = "```python\nimport numpy\nprint(1)\n```\n\n```python\nprint(2)\n```\n"


def session(text: str = POST):  # type: ignore[no-untyped-def]
    return plan(parse("p.md", text), {"sklearn": ENV})[0]


def test_store_and_load_round_trip(tmp_path: Path) -> None:
    s = session()
    results = [SnippetResult(x, "sklearn", "passed", Output(f"{n}\n"), duration_s=0.5)
               for n, x in enumerate(s.snippets)]
    cache.store(tmp_path, "ab" + "0" * 62, results)
    loaded = cache.load(tmp_path, "ab" + "0" * 62, s, warn=pytest.fail)
    assert loaded is not None
    assert [r.output for r in loaded] == [r.output for r in results]
    assert all(r.cached for r in loaded)


def test_stored_output_names_lines_as_the_post_has_them_when_replayed(tmp_path: Path) -> None:
    """A warning at the post's line 3 (snippet 1, its line 2) is replayed, after prose moved the
    snippets down two lines and the post was renamed, as the new post's line 5; a line no
    snippet holds keeps its number."""
    s = session()
    said = "p.md:3: UserWarning: careful\n  File \"p.md\", line 3, in <module>\np.md:99: x\n"
    results = [SnippetResult(s.snippets[0], "sklearn", "passed", Output("", said)),
               SnippetResult(s.snippets[1], "sklearn", "passed", Output("p.md:7: late\n"))]
    cache.store(tmp_path, "ab" + "1" * 62, results)
    moved = plan(parse("q.md", "Prose.\n\n" + POST), {"sklearn": ENV})[0]
    loaded = cache.load(tmp_path, "ab" + "1" * 62, moved, warn=pytest.fail)
    assert loaded is not None
    assert loaded[0].output.stderr == said.replace("p.md:3", "q.md:5").replace(
        '"p.md", line 3', '"q.md", line 5').replace("p.md:99", "q.md:99")
    assert loaded[1].output.stdout == "q.md:9: late\n"


def test_a_result_comes_back_whole_lone_surrogates_figures_and_all(tmp_path: Path) -> None:
    """Every field of a stored result comes back (the snippet and env as the session has them
    now, cached); a lone surrogate a kernel sent, and a table's HTML that names the post's
    lines, as the text does."""
    s = session()
    parts = (Part("text", "lone \ud800 p.md:3\n"), Part("table", "t", "<td>p.md:3</td>"),
             Part("image", "<Figure>", png=b"\x89PNG\r\n\x1a\n\x00\xff"))
    results = [SnippetResult(s.snippets[0], "sklearn", "passed",
                             Output("lone \ud800 p.md:3\n", "\udfff", parts), duration_s=0.5),
               SnippetResult(s.snippets[1], "sklearn", "skipped", reason="slow \ud800")]
    assert cache.store(tmp_path, KEY, results, warn=pytest.fail)
    moved = plan(parse("q.md", "Prose.\n\n" + POST), {"sklearn": ENV})[0]
    loaded = cache.load(tmp_path, KEY, moved, warn=pytest.fail)
    now = [SnippetResult(x, "sklearn", r.status,
                         codec.retext(r.output, lambda t: t.replace("p.md:3", "q.md:5")),
                         reason=r.reason, duration_s=r.duration_s, cached=True)
           for x, r in zip(moved.snippets, results, strict=True)]
    assert loaded == tuple(now)


def test_failed_session_is_not_stored(tmp_path: Path) -> None:
    s = session()
    results = [SnippetResult(s.snippets[0], "sklearn", "passed"),
               SnippetResult(s.snippets[1], "sklearn", "failed")]
    cache.store(tmp_path, "cd" + "0" * 62, results)
    assert not list(tmp_path.rglob("*.json"))


def test_corrupt_entry_is_discarded_with_a_warning(tmp_path: Path) -> None:
    key = "ef" + "0" * 62
    entry = cache.entry(tmp_path, key)
    entry.parent.mkdir()
    entry.write_text('{"key": "ef00", "snipp')
    warnings: list[str] = []
    assert cache.load(tmp_path, key, session(), warn=warnings.append) is None
    assert len(warnings) == 1 and "corrupt cache entry" in warnings[0]
    assert not entry.exists()


def run(paths: list[Path], config: Config, **options: Any) -> Run:
    return run_posts(paths, config, Options(**options))


def _no_env(spec: EnvSpec, *args: object) -> envs.BuiltEnv:
    raise EnvError(f"environment '{spec.name}': no env can be built here")


@pytest.mark.kernel
def test_hit_builds_no_env_and_starts_no_kernel(tmp_path: Path, project: Config,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    config = replace(project, cache_dir=tmp_path / "cache")
    post = tmp_path / "p.md"
    post.write_text("```python runner:env=sklearn\nprint('hello')\n```\n")
    assert run([post], config, mode="update").exit_code == 0
    # No env can be built here: a run that needed a kernel would fail.
    monkeypatch.setattr(envs, "build", _no_env)
    hit = run([post], config)
    assert hit.exit_code == 0 and hit.summary()["cached"] == 1
    assert hit.posts[0].snippets[0].output.stdout == "hello\n"
    missed = run([post], config, cache=False)
    assert missed.exit_code == 1 and missed.snippets[0].error is not None
    assert missed.snippets[0].error.type == "EnvError"
    post.write_text(post.read_text().replace("hello", "changed"))  # a changed snippet misses
    changed = run([post], config)
    assert changed.snippets[0].error is not None and changed.snippets[0].error.type == "EnvError"


@pytest.mark.kernel
def test_two_jobs_give_the_same_results_as_one(tmp_path: Path, project: Config) -> None:
    for n in range(3):
        (tmp_path / f"post-{n}.md").write_text(
            f"```python runner:env=sklearn\nprint({n})\n```\n\n```python\nprint({n} * 2)\n```\n")
    runs = [run([tmp_path], project, cache=False, jobs=jobs) for jobs in (1, 2)]
    reports = [to_json(r) for r in runs]
    for report in reports:
        for snippet in report["snippets"]:
            snippet.pop("duration_s")
    assert reports[0] == reports[1]
    assert [p.status for p in runs[0].posts] == ["stale"] * 3  # no output recorded yet
    assert [r.output.stdout for r in runs[1].snippets] == ["0\n", "0\n", "1\n", "2\n", "2\n",
                                                          "4\n"]


# --- entries that are not what they should be: each is a miss with one warning, never a crash
# or a hang, and is removed -------------------------------------------------------------------

KEY = "9a" + "0" * 62
HOLD_LOCK = """
import sys, time
from filelock import FileLock
lock = FileLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
time.sleep(120)
"""


def stored(folder: Path, key: str = KEY) -> list[SnippetResult]:
    s = session()
    results = [SnippetResult(x, "sklearn", "passed", Output(f"{n}\n"))
               for n, x in enumerate(s.snippets)]
    cache.store(folder, key, results, warn=pytest.fail)
    return results


def make_bad_entry(entry: Path, kind: str) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    if kind == "folder":
        (entry / "inside").mkdir(parents=True)
    elif kind == "fifo":
        os.mkfifo(entry)
    elif kind == "symlink":  # to a good entry: still not trusted
        stored(entry.parent.parent / "elsewhere", KEY)
        entry.symlink_to(cache.entry(entry.parent.parent / "elsewhere", KEY))
    elif kind == "huge":
        with entry.open("wb") as out:
            out.truncate(cache.MAX_ENTRY_BYTES + 1)  # sparse: costs no disk
    elif kind == "deep":
        entry.write_text("[" * 100_000)
    elif kind in DAMAGE:  # a good entry, one value of it made wrong
        stored(entry.parent.parent, KEY)
        data = json.loads(entry.read_text())
        DAMAGE[kind](data["snippets"][1])
        entry.write_text(json.dumps(data))


DAMAGE: dict[str, Callable[[dict[str, Any]], object]] = {
    "wrong types": lambda item: item["output"].update(stdout=1),
    "failed": lambda item: item.update(status="failed"),  # a failure is never stored
    "not run": lambda item: item.update(status="skipped", not_run_after=1),
    "unknown field": lambda item: item.update(extra=1),
    "missing field": lambda item: item.pop("env"),
    "bad png": lambda item: item["output"].update(parts=[
        {"kind": "image", "text": "", "html": "", "png": "not base64!"}]),
    "part kind": lambda item: item["output"].update(parts=[
        {"kind": "bogus", "text": "", "html": "", "png": ""}]),
}


@pytest.mark.parametrize("kind", ["folder", "fifo", "symlink", "huge", "deep", *DAMAGE])
def test_a_bad_entry_is_a_miss_with_one_warning_and_is_removed(tmp_path: Path,
                                                               kind: str) -> None:
    entry = cache.entry(tmp_path / "cache", KEY)
    make_bad_entry(entry, kind)
    warnings: list[str] = []
    loaded = without_waiting(
        lambda: cache.load(tmp_path / "cache", KEY, session(), warn=warnings.append),
        entry, "cache.load")
    assert loaded is None
    assert len(warnings) == 1 and f"discarding a corrupt cache entry {entry}" in warnings[0]
    assert not os.path.lexists(entry)
    if kind == "symlink":  # the link went, not its target
        assert cache.entry(tmp_path / "cache" / "elsewhere", KEY).is_file()


@pytest.mark.parametrize("kind", ["folder", "fifo", "symlink"])
def test_store_replaces_whatever_stands_at_the_entry_path(tmp_path: Path, kind: str) -> None:
    entry = cache.entry(tmp_path / "cache", KEY)
    make_bad_entry(entry, kind)
    results = stored(tmp_path / "cache")
    assert entry.is_file() and not entry.is_symlink()
    loaded = cache.load(tmp_path / "cache", KEY, session(), warn=pytest.fail)
    assert loaded is not None and [r.output for r in loaded] == [r.output for r in results]


def test_store_skips_with_a_warning_when_the_lock_stays_held(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = cache.entry(tmp_path, KEY)
    entry.parent.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, f"{entry}.lock"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        monkeypatch.setattr(cache, "LOCK_SECONDS", 0.5)
        warnings: list[str] = []
        started = time.monotonic()
        cache.store(tmp_path, KEY, [SnippetResult(s, "sklearn", "passed")
                                    for s in session().snippets], warn=warnings.append)
        assert time.monotonic() - started < 5
        assert warnings == [f"not caching {entry}: its lock was held for over 0.5 s"]
        assert not entry.exists()
    finally:
        holder.kill()
        holder.wait()


DAY = 86400.0


def _aged(path: Path, days: float) -> Path:
    """`path` last read and written `days` ago."""
    then = time.time() - days * DAY
    os.utime(path, (then, then), follow_symlinks=False)
    return path


def test_sweep_removes_what_no_run_used_for_a_month_and_nothing_else(tmp_path: Path) -> None:
    keys = {name: digit * 64 for name, digit in (("old", "a"), ("young", "b"), ("kept", "c"),
                                                 ("read", "d"))}
    for key in keys.values():
        stored(tmp_path, key)
    old, young, kept, read = (cache.entry(tmp_path, key) for key in keys.values())
    for path in (old, kept, read):
        _aged(path, 31)
        _aged(Path(f"{path}.lock"), 31)
    then = time.time() - 31 * DAY
    os.utime(read, (time.time(), then))  # written a month ago, read today (atime)
    orphan = tmp_path / "ab" / f"ab{'0' * 62}.json.lock"  # its entry gone long ago
    orphan.parent.mkdir()
    orphan.touch()
    _aged(orphan, 40)
    others = [tmp_path / name for name in (  # what the runner did not make: never removed
        "verdicts/x.json", "ab/notes.json", f"ab/{'c' * 64}.json", f"cc/{'c' * 62}.json",
        f"cc/{'c' * 64}.txt", f"{'e' * 64}.json")]
    for other in others:
        other.parent.mkdir(exist_ok=True)
        other.write_text("{}")
        _aged(other, 90)
    assert cache.sweep(tmp_path, {os.path.abspath(kept)}, time.time()) == 2
    assert not old.exists() and not Path(f"{old}.lock").exists()
    assert not orphan.exists()
    for path in (young, kept, read, *others):
        assert path.exists(), path
    assert Path(f"{young}.lock").exists() and Path(f"{kept}.lock").exists()
    assert [r.output.stdout for r in cache.load(tmp_path, keys["kept"], session(),
                                                pytest.fail) or ()] == ["0\n", "1\n"]


def test_a_cache_folder_is_due_a_sweep_once_a_day(tmp_path: Path) -> None:
    now = time.time()
    assert cache.sweep_due(tmp_path, now)  # never swept
    assert not cache.sweep_due(tmp_path, now + 3600)
    assert cache.sweep_due(tmp_path, now + DAY + 1)
    assert not cache.sweep_due(tmp_path, now + DAY + 2)
    assert not cache.sweep_due(tmp_path / "missing", now)  # cannot stamp: no sweep


# --- files beside a post (issue 20, item 1): regular files of its folder only, read without
# following a link or waiting on a FIFO, bounded; the kernel gets the bytes the key was made
# from ------------------------------------------------------------------------------------------


TZ_POST = "```python runner:env=sklearn\nimport os\nprint(os.environ.get('TZ'))\n```\n"


@pytest.mark.kernel
def test_a_cached_run_under_another_tz_runs_again(tmp_path: Path, project: Config,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 20, item 9: output made under TZ=UTC is never replayed under another TZ."""
    config = replace(project, cache_dir=tmp_path / "cache")
    post = tmp_path / "p.md"
    post.write_text(TZ_POST)
    monkeypatch.setenv("TZ", "UTC")
    assert run([post], config, mode="update").snippets[0].output.stdout == "UTC\n"
    again = run([post], config, cache=True)
    assert again.exit_code == 0 and again.summary()["cached"] == 1
    shutil.rmtree(config.cache_dir / "verdicts", ignore_errors=True)  # the cache alone
    monkeypatch.setenv("TZ", "America/New_York")
    moved = run([post], config, mode="update")
    assert moved.summary()["cached"] == 0
    assert moved.snippets[0].output.stdout == "America/New_York\n"
    assert "America/New_York" in post.read_text()

