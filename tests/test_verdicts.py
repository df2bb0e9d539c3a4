"""Verdicts (`runner.verdicts`): a passed post replayed while nothing that decided it changed,
and run again the moment anything did."""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from runner import atomic, markdown, verdicts
from runner.atomic import seen
from runner.config import Config
from runner.model import Markers, Output, Part, Region, Snippet, SnippetResult
from runner.report import PostOutcome, Run
from runner.run import Options, open_verdicts, run_posts

POST = """\
# A post that reads the file beside it

```python runner:env=sklearn
print(open("data.txt").read().strip().upper())
```
"""


@dataclass(frozen=True)
class _Shape:
    names: frozenset[str]
    pattern: re.Pattern[str]
    folder: Path


def test_a_fingerprint_is_the_same_in_every_process_and_changes_with_what_decides() -> None:
    one = _Shape(frozenset({"numpy", "pandas", "scipy"}), re.compile("a+", re.I), Path("x"))
    again = _Shape(frozenset({"scipy", "numpy", "pandas"}), re.compile("a+", re.I), Path("x"))
    assert json.dumps(verdicts.fingerprint(one)) == json.dumps(verdicts.fingerprint(again))
    assert verdicts.fingerprint(one) != verdicts.fingerprint(replace(one, folder=Path("y")))
    assert verdicts.fingerprint(one) != verdicts.fingerprint(
        replace(one, pattern=re.compile("a+")))  # flags count


def test_options_that_change_an_outcome_name_another_verdict(
        project: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_SETTING", "1")  # passed on, the kernel gets it: another verdict
    base = open_verdicts(project, Options())
    assert base is not None
    for changed in (Options(timeout=5), Options(keep_going=True), Options(ignore_stamp=True),
                    Options(mode="update"), Options(passenv=("MY_SETTING",))):
        other = open_verdicts(project, changed)
        assert other is not None and other.decided_by != base.decided_by, changed
    for same in (Options(jobs=1), Options(cache=False), Options(warm=False),
                 Options(shard=(1, 2)), Options(deadline=60),
                 Options(passenv=("UNSET_SETTING",))):  # nothing the kernel gets changes
        other = open_verdicts(project, same)
        assert other is not None and other.decided_by == base.decided_by, same
    for never in (Options(params=(("N", "1"),)), Options(check_determinism=True)):
        assert open_verdicts(project, never) is None
    locked = dict(project.envs)
    locked["sklearn"] = replace(locked["sklearn"], lock_hash="f" * 64)
    other = open_verdicts(replace(project, envs=locked), Options())
    assert other is not None and other.decided_by != base.decided_by


def test_the_kernels_environment_names_another_verdict(
        project: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 20, item 9: a verdict is decided by the variables each env's kernels get."""
    monkeypatch.setenv("MY_SETTING", "1")
    base = open_verdicts(project, Options(passenv=("MY_SETTING",)))
    assert base is not None
    for name, value in (("TZ", "Test/Zone-1"), ("LANG", "xx_XX.TEST"), ("MY_SETTING", "2"),
                        ("OMP_NUM_THREADS", "77")):
        with monkeypatch.context() as changed:
            changed.setenv(name, value)
            other = open_verdicts(project, Options(passenv=("MY_SETTING",)))
            assert other is not None and other.decided_by != base.decided_by, name
    monkeypatch.setenv("RUNNER_TEST_SECRET", "not for kernels")
    same = open_verdicts(project, Options(passenv=("MY_SETTING",)))
    assert same is not None and same.decided_by == base.decided_by


def test_an_outcome_comes_back_as_it_was_kept(tmp_path: Path) -> None:
    store = verdicts.Verdicts(tmp_path / "verdicts", ["test"])
    post = tmp_path / "p.md"
    post.write_text("text")
    snippet = Snippet(str(post), 3, "print(1)\n",
                      Markers(tolerance=0.01, unordered=True, variables=(("A", "1"),)),
                      anchor=5, prefix="> ", output=Region(6, 12), start=2)
    skipped = Snippet(str(post), 9, "x\n", Markers(skip="slow"), hidden=True)
    results = (SnippetResult(snippet, "sklearn", "passed",
                             Output("1\n", "warn \ud800\n", (Part("text", "1\n"),
                                                      Part("image", "fig", png=b"\x89PNG\0")))),
               SnippetResult(skipped, "sklearn", "skipped", reason="slow", duration_s=0.25))
    outcome = PostOutcome(str(post), "passed", snippets=results, stamp_stale=True)
    store.keep(post, "text", outcome, [], None, verdicts.figures_seen(tmp_path / "p"))
    back = store.replay(post, "text")
    assert back == replace(outcome, snippets=tuple(replace(r, cached=True) for r in results))
    assert store.replay(post, "text!") is None  # other bytes: not this post's verdict


@pytest.mark.parametrize("damage", ["truncated", "wrong type", "failed", "symlink", "reason",
                                    "part kind", "marker", "png", "unknown", "signature"])
def test_a_verdict_that_cannot_be_read_back_is_a_miss_and_removed(tmp_path: Path,
                                                                damage: str) -> None:
    store = verdicts.Verdicts(tmp_path / "verdicts", ["test"])
    post = tmp_path / "p.md"
    snippet = Snippet(str(post), 1, "print(1)\n", Markers())
    outcome = PostOutcome(str(post), "passed",
                          snippets=(SnippetResult(snippet, "sklearn", "passed"),))
    store.keep(post, "text", outcome, [], None, verdicts.figures_seen(tmp_path / "p"))
    [kept] = (tmp_path / "verdicts").iterdir()
    data = json.loads(kept.read_text())
    if damage == "truncated":
        kept.write_text(kept.read_text()[:40])
    elif damage == "wrong type":
        data["outcome"]["snippets"][0]["snippet"]["line"] = "1"
        kept.write_text(json.dumps(data))
    elif damage == "signature":
        data["files"] = [["x", [1, 2, "3"]]]
        kept.write_text(json.dumps(data))
    elif damage == "failed":  # only passes are ever kept
        data["outcome"]["status"] = "failed"
        kept.write_text(json.dumps(data))
    elif damage in ("reason", "part kind", "marker", "png", "unknown"):  # would reach reports
        item = data["outcome"]["snippets"][0]
        if damage == "reason":
            item["reason"] = {"a": 1}
        elif damage == "png":
            item["output"]["parts"] = [{"kind": "image", "text": "", "html": "", "png": "%"}]
        elif damage == "unknown":
            item["snippet"]["markers"]["since"] = 1  # a field of a later runner
        elif damage == "part kind":
            item["output"]["parts"] = [{"kind": "bogus", "text": "", "html": "", "png": ""}]
        else:
            item["snippet"]["markers"]["skip"] = 3
        kept.write_text(json.dumps(data))
    else:
        target = tmp_path / "elsewhere.json"
        kept.rename(target)
        kept.symlink_to(target)
    assert store.replay(post, "text") is None
    assert not kept.exists() and not kept.is_symlink()


def _verify(post: Path, config: Config, **options: object) -> Run:
    return run_posts([post], config, Options(**options))  # type: ignore[arg-type]


def _parsed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The posts parsed from now on (a replayed post is not)."""
    seen: list[str] = []
    parse = markdown.parse

    def counting(path: str, text: str) -> object:
        seen.append(path)
        return parse(path, text)

    monkeypatch.setattr(markdown, "parse", counting)
    return seen


@pytest.mark.kernel
def test_a_passed_post_is_replayed_until_anything_that_decided_it_changes(
        tmp_path: Path, project: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(atomic, "RACY_NS", 0)  # files just written are vouched for at once
    config = replace(project, cache_dir=tmp_path / "cache")
    post = tmp_path / "blog" / "p.md"
    post.parent.mkdir()
    (post.parent / "data.txt").write_text("hello\n")
    post.write_text(POST)
    assert _verify(post, config, mode="update").posts[0].written
    parsed = _parsed(monkeypatch)

    def replayed(expect: str = "passed", **options: object) -> bool:
        before = len(parsed)
        run = _verify(post, config, **options)
        assert run.posts[0].status == expect, run.posts[0]
        return len(parsed) == before

    assert not replayed()  # cache hits, settled: the verdict is kept
    assert replayed()
    run = _verify(post, config)
    assert run.summary()["cached"] == 1 and run.snippets[0].output.stdout == "HELLO\n"
    os.utime(post)  # touched, the same bytes
    assert replayed()

    (post.parent / "data.txt").write_text("world\n")  # same size, other bytes
    assert not replayed("stale")
    (post.parent / "data.txt").write_text("hello\n")
    assert not replayed()  # passes again (the old entry), kept anew
    assert replayed()

    (post.parent / "more.csv").write_text("a,b\n")  # a new file beside the post
    assert not replayed()
    assert replayed()

    orphan = post.parent / "p" / "snippet-9-figure-1.png"  # a figure no snippet draws
    orphan.parent.mkdir()
    orphan.write_bytes(b"\x89PNG")
    assert not replayed("stale")
    orphan.unlink()
    assert not replayed()

    for entry in (config.cache_dir).glob("??/*.json"):
        entry.unlink()  # the execution cache emptied: its entries decided the verdict
    assert not replayed()  # runs again, and keeps a verdict with the new entry
    assert replayed()

    assert not replayed(cache=False)  # --no-cache never replays
    assert not replayed(timeout=30)  # another option: another verdict
    post.write_text(post.read_text().replace("# A post", "# The post"))
    assert not replayed()


@pytest.mark.kernel
def test_a_post_that_stops_passing_forgets_its_verdict(
        tmp_path: Path, project: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(atomic, "RACY_NS", 0)
    config = replace(project, cache_dir=tmp_path / "cache")
    post = tmp_path / "p.md"
    post.write_text("```python runner:env=sklearn\nimport random\nprint(random.random() < 2)\n"
                    "```\n")
    _verify(post, config, mode="update")
    assert _verify(post, config).posts[0].status == "passed"
    assert len(list((config.cache_dir / "verdicts").iterdir())) == 1
    post.write_text(post.read_text().replace("< 2", "< -1"))  # stale now
    assert _verify(post, config).posts[0].status == "stale"
    assert list((config.cache_dir / "verdicts").iterdir()) == []
    post.write_text(post.read_text().replace("< -1", "< 2"))
    monkeypatch.setattr(verdicts, "_sources", lambda: ["another runner"])
    parsed = _parsed(monkeypatch)
    assert _verify(post, config).posts[0].status == "passed"
    assert parsed == [str(post)]  # a runner changed in place replays nothing of the old one


@pytest.mark.kernel
def test_a_file_changed_during_the_run_is_never_vouched_for(
        tmp_path: Path, project: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    """A data file edited while its post runs: the results came from its old bytes, so no
    later run may replay them as the new file's (its stat is taken when the run reads it)."""
    import threading
    import time

    monkeypatch.setattr(atomic, "RACY_NS", 0)  # the order of stat and read alone
    config = replace(project, cache_dir=tmp_path / "cache")
    post = tmp_path / "blog" / "p.md"
    post.parent.mkdir()
    data = post.parent / "data.txt"
    data.write_text("hello\n")
    post.write_text(POST + "\n```python\nimport time\ntime.sleep(3)\n```\n")
    assert _verify(post, config, mode="update").posts[0].written
    edit = threading.Timer(1.5, lambda: data.write_text("world\n"))
    edit.start()
    _verify(post, config, cache=False)  # passes or not, by when the kernel copied the file
    edit.join()
    time.sleep(0.05)
    assert _verify(post, config).posts[0].status == "stale"
    assert _verify(post, config).posts[0].status == "stale"


@pytest.mark.kernel
def test_files_changed_just_now_are_not_vouched_for(
        tmp_path: Path, project: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where timestamps are coarse, a second write in the same tick keeps a file's stat: a
    file changed within RACY_NS of the run keeps the post from being kept (git's racily
    clean files); once older, the next run keeps it."""
    config = replace(project, cache_dir=tmp_path / "cache")
    post = tmp_path / "blog" / "p.md"
    post.parent.mkdir()
    (post.parent / "data.txt").write_text("hello\n")
    post.write_text(POST)
    _verify(post, config, mode="update")
    monkeypatch.setattr(atomic, "RACY_NS", 3600 * 10**9)  # everything here is recent
    assert _verify(post, config).posts[0].status == "passed"
    assert not (config.cache_dir / "verdicts").exists()
    monkeypatch.setattr(atomic, "RACY_NS", 0)
    assert _verify(post, config).posts[0].status == "passed"
    assert len(list((config.cache_dir / "verdicts").iterdir())) == 1
    alone = tmp_path / "alone" / "q.md"  # no file beside it: its cache entry alone
    alone.parent.mkdir()
    alone.write_text("```python runner:env=sklearn\nprint(6 * 7)\n```\n")
    _verify(alone, config, mode="update")
    monkeypatch.setattr(atomic, "RACY_NS", 3600 * 10**9)
    assert _verify(alone, config).posts[0].status == "passed"  # an entry is renamed whole:
    assert len(list((config.cache_dir / "verdicts").iterdir())) == 2  # a new inode tells


def _kept_verdict(tmp_path: Path, name: str, entry: Path) -> Path:
    """A kept verdict for the post `name`, naming `entry` among its files; its path."""
    store = verdicts.Verdicts(tmp_path / "verdicts", ["test"])
    post = tmp_path / f"{name}.md"
    post.write_text(name)
    snippet = Snippet(str(post), 1, "print(1)\n", Markers())
    entry.parent.mkdir(parents=True, exist_ok=True)
    entry.write_text("{}")
    store.keep(post, name, PostOutcome(str(post), "passed", snippets=(
        SnippetResult(snippet, "sklearn", "passed"),)), [(entry, seen(entry, renamed=True))],
        None, verdicts.figures_seen(tmp_path / name))
    [path] = store.used
    assert store.named == {str(entry)}
    return Path(path)


def test_a_sweep_removes_verdicts_unused_for_a_month_and_names_the_entries_of_the_rest(
        tmp_path: Path) -> None:
    now = 1e9 + 90 * 86400.0  # 90 days after the verdicts were kept
    old = _kept_verdict(tmp_path, "old", tmp_path / "cache" / "aa" / "old.json")
    used = _kept_verdict(tmp_path, "used", tmp_path / "cache" / "bb" / "used.json")
    recent = _kept_verdict(tmp_path, "recent", tmp_path / "cache" / "cc" / "recent.json")
    for path in (old, used):
        os.utime(path, (1e9, 1e9))  # neither read nor written for 90 days
    os.utime(recent, (now - 86400, 1e9))  # read (replayed) yesterday
    before = recent.stat().st_atime_ns
    notes = tmp_path / "verdicts" / "notes.json"  # not a verdict: never removed
    notes.write_text("{}")
    os.utime(notes, (1e9, 1e9))
    named = verdicts.sweep(tmp_path / "verdicts", {str(used)}, now)
    assert not old.exists() and used.exists() and recent.exists() and notes.exists()
    assert str(tmp_path / "cache" / "cc" / "recent.json") in named
    assert not {str(tmp_path / "cache" / s / f"{n}.json")
                for s, n in (("aa", "old"), ("bb", "used"))} & named  # used: not read again
    assert recent.stat().st_atime_ns == before  # the sweep's own read is no use of it


@pytest.mark.kernel
def test_a_run_that_stores_sweeps_what_no_run_used_for_a_month(
        tmp_path: Path, project: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real runs; entries and verdicts aged by hand, as a month of runs that never used them
    would leave them. What this run used, or a remaining verdict names, stays."""
    monkeypatch.setattr(atomic, "RACY_NS", 0)
    config = replace(project, cache_dir=tmp_path / "cache")
    blog = tmp_path / "blog"
    blog.mkdir()
    (blog / "data.txt").write_text("hello\n")
    gone, kept = blog / "gone.md", blog / "kept.md"
    gone.write_text(POST)
    kept.write_text(POST.replace(".upper())", ".upper())  # kept"))  # code of its own
    for post in (gone, kept):
        assert _verify(post, config, mode="update").posts[0].written
        assert _verify(post, config).posts[0].status == "passed"  # keeps its verdict
    cache_files = [*config.cache_dir.glob("??/*"), *config.cache_dir.glob("verdicts/*")]
    assert len(cache_files) == 2 + 2 + 2  # entries, their locks, verdicts

    def age_all(stamp: bool = True) -> None:
        month_ago = time.time() - 31 * 86400
        for path in [*config.cache_dir.glob("??/*"), *config.cache_dir.glob("verdicts/*"),
                     *([config.cache_dir / ".swept"] if stamp else [])]:
            os.utime(path, (month_ago, month_ago))

    age_all()
    new = blog / "new.md"  # new code, the same output: passes, and stores an entry
    new.write_text(kept.read_text().replace("# kept", "# new"))
    run = run_posts([kept, new], config, Options())
    assert [(p.status, p.snippets[0].cached) for p in run.posts] == [("passed", True),
                                                                     ("passed", False)]
    assert len(list(config.cache_dir.glob("??/*.json"))) == 2  # kept's (its verdict names
    assert len(list(config.cache_dir.glob("??/*.lock"))) == 2  # it), new's; gone's went
    assert len(list(config.cache_dir.glob("verdicts/*.json"))) == 2
    assert _verify(kept, config).summary()["cached"] == 1
    assert _verify(gone, config).summary()["cached"] == 0  # runs again, and passes
    assert len(list(config.cache_dir.glob("??/*.json"))) == 3

    age_all(stamp=False)  # swept less than a day ago: the next run that stores does not sweep
    other = blog / "other.md"
    other.write_text(kept.read_text().replace("# kept", "# other"))
    assert _verify(other, config).posts[0].status == "passed"
    assert len(list(config.cache_dir.glob("??/*.json"))) == 4


@pytest.mark.kernel
def test_a_verdict_kept_under_one_tz_is_not_replayed_under_another(
        tmp_path: Path, project: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 20, item 9: the post ran under TZ=UTC and its verdict was kept; under another
    TZ it runs again, prints the new value, and is stale."""
    monkeypatch.setattr(atomic, "RACY_NS", 0)
    config = replace(project, cache_dir=tmp_path / "cache")
    post = tmp_path / "p.md"
    post.write_text("```python runner:env=sklearn\nimport os\nprint(os.environ.get('TZ'))\n"
                    "```\n")
    monkeypatch.setenv("TZ", "UTC")
    assert _verify(post, config, mode="update").posts[0].written
    assert _verify(post, config).posts[0].status == "passed"  # keeps its verdict
    parsed = _parsed(monkeypatch)
    assert _verify(post, config).posts[0].status == "passed" and parsed == []  # replayed
    monkeypatch.setenv("TZ", "America/New_York")
    run = _verify(post, config)
    assert parsed == [str(post)]
    assert run.posts[0].status == "stale"
    assert run.snippets[0].output.stdout == "America/New_York\n"
