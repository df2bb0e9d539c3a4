"""`--shard K/N` balanced by the durations of an earlier run's report (`--durations FILE`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runner.markdown import parse
from runner.plan import plan
from runner.report import post_key, read_durations
from runner.run import shard
from runner.settle import POST_S, SESSION_START_S, Planned
from tests.conftest import run_cli
from tests.test_plan import ENVS

Durations = dict[tuple[str, int], float]


def planned(name: str, snippets: int, env: str = "sklearn", skip: int = 0) -> Planned:
    """A post of `snippets` snippets in `env` (the last `skip` of them `runner:skip`), whose
    fences are at lines 1, 5, 9, ..."""
    blocks = [f"```python runner:env={env}{' runner:skip' if n >= snippets - skip else ''}\n"
              f"print({n})\n```\n\n" for n in range(snippets)]
    post = parse(name, "".join(blocks))
    return Planned(Path(name), post, plan(post, ENVS))


def fences(item: Planned) -> list[int]:
    return [s.line for session in item.sessions for s in session.snippets]


def timed(item: Planned, seconds: float) -> Durations:
    """Durations for a post's snippets, `seconds` in all, shared evenly."""
    lines = fences(item)
    return {(post_key(item.path), line): seconds / len(lines) for line in lines}


def loads(items: list[Planned], n: int, durations: Durations) -> list[float]:
    """The real seconds of each of n shards, from the durations (with a session's start)."""
    def seconds(item: Planned) -> float:
        key = post_key(item.path)
        return sum(SESSION_START_S + sum(durations[key, s.line] for s in session.snippets)
                   for session in item.sessions)
    return [sum(map(seconds, shard(items, (k, n), durations))) for k in range(1, n + 1)]


def a_blog() -> tuple[list[Planned], Durations]:
    """One TensorFlow post of 60 s beside 100 light posts of 1 s (two snippets each)."""
    heavy = planned("posts/tensorflow.md", 1, "tensorflow")
    light = [planned(f"posts/light-{n:03d}.md", 2) for n in range(100)]
    durations = timed(heavy, 60.0)
    for item in light:
        durations |= timed(item, 1.0)
    return [heavy, *light], durations


def test_a_heavy_post_beside_light_ones_gives_shards_within_20_percent() -> None:
    items, durations = a_blog()
    for n in (2, 3):
        by_time = loads(items, n, durations)
        assert max(by_time) <= 1.2 * min(by_time), (n, by_time)
    # By snippet count the TensorFlow post weighs less than a light one: its shard is late.
    by_count = [sum(SESSION_START_S * len(i.sessions) + sum(durations[post_key(i.path), line]
                                                            for line in fences(i))
                    for i in shard(items, (k, 2))) for k in (1, 2)]
    assert max(by_count) > 1.2 * min(by_count), by_count


def test_the_heavy_post_is_alone_when_it_outweighs_the_rest() -> None:
    heavy = planned("posts/z-tensorflow.md", 1, "tensorflow")
    light = [planned(f"posts/light-{n}.md", 1) for n in range(5)]
    durations = timed(heavy, 60.0)
    for item in light:
        durations |= timed(item, 1.0)
    assert [i.path for i in shard([*light, heavy], (1, 2), durations)] == [heavy.path]
    assert [i.path for i in shard([*light, heavy], (2, 2), durations)] == [i.path for i in light]


def test_a_post_or_snippet_missing_from_the_durations_takes_the_average() -> None:
    known = planned("posts/known.md", 2)
    durations = {(post_key(known.path), 1): 1.0, (post_key(known.path), 5): 3.0}
    new = planned("posts/new.md", 3, skip=1)  # two runnable snippets, one skipped
    assert new.seconds(durations, 2.0) == pytest.approx(POST_S + SESSION_START_S + 2 * 2.0)
    half = planned("posts/known.md", 3)  # a snippet added to a known post (line 9)
    assert half.seconds(durations, 2.0) == pytest.approx(POST_S + SESSION_START_S + 1 + 3 + 2)
    assert planned("posts/prose.md", 0).seconds(durations, 2.0) == POST_S
    # Three new posts of two snippets at the average of 2 s weigh 3 x 4.2 s against the known
    # post's 4.2 s: with 2 shards, the known post and one new post share a shard.
    items = [known, *(planned(f"posts/new-{n}.md", 2) for n in range(3))]
    parts = [[str(i.path) for i in shard(items, (k, 2), durations)] for k in (1, 2)]
    assert sorted(map(len, parts)) == [2, 2], parts


def test_durations_match_a_post_however_its_path_was_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"snippets": [
        {"post": "./posts/../posts/heavy.md", "line": 1, "status": "passed", "duration_s": 60},
        {"post": "posts/light.md", "line": 1, "status": "passed", "duration_s": 1},
        {"post": "posts/light.md", "line": 5, "status": "skipped", "duration_s": 0},
        {"post": "posts/light.md", "line": 9, "status": "failed", "duration_s": float("nan")},
    ]}))
    durations = read_durations(report)
    assert durations == {(f"{tmp_path.as_posix()}/posts/heavy.md", 1): 60.0,
                         (f"{tmp_path.as_posix()}/posts/light.md", 1): 1.0}
    heavy = planned(str(tmp_path / "posts" / "heavy.md"), 1)  # absolute here, relative there
    assert heavy.seconds(durations, 5.0) == pytest.approx(POST_S + SESSION_START_S + 60)


@pytest.mark.parametrize("text", ["not json", "[]", '{"snippets": [{"post": 1}]}',
                                  '{"snippets": 3}'])
def test_a_file_that_is_not_a_report_is_a_value_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "r.json"
    path.write_text(text)
    with pytest.raises(ValueError):
        read_durations(path)


def test_a_fifo_is_refused_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="FIFO"):
        read_durations(fifo)


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.tuples(st.integers(0, 3), st.floats(0, 100)), max_size=25),
       known=st.booleans(), n=st.integers(1, 5))
def test_every_post_is_in_exactly_one_shard_and_the_split_is_stable(
        sizes: list[tuple[int, float]], known: bool, n: int) -> None:
    items = [planned(f"posts/p{i}.md", count) for i, (count, _) in enumerate(sizes)]
    durations: Durations = {}
    for item, (count, seconds) in zip(items, sizes, strict=True):
        if known and count:
            durations |= timed(item, seconds)
    parts = [shard(items, (k, n), durations) for k in range(1, n + 1)]
    names = sorted(str(i.path) for part in parts for i in part)
    assert names == sorted(str(i.path) for i in items)
    assert all(part == [i for i in items if i in part] for part in parts), "in post order"
    assert parts == [shard(list(reversed(items)), (k, n), durations)[::-1]
                     for k in range(1, n + 1)], "the same split whatever the order given"


# --- the command line --------------------------------------------------------------------------


def test_a_missing_durations_file_is_one_warning_and_the_run_goes_on(tmp_path: Path) -> None:
    for name in ("a.md", "b.md"):
        (tmp_path / name).write_text("# Prose only\n")
    done = run_cli("verify", tmp_path, "--shard", "1/2", "--durations", tmp_path / "none.json",
                   "--report", tmp_path / "r.json")
    assert done.returncode == 0, done.stdout + done.stderr
    warnings = [line for line in done.stderr.splitlines() if "cannot read" in line]
    assert warnings == [f"runner: cannot read durations from {tmp_path / 'none.json'}: No such "
                        "file or directory; shards balanced by snippet count"]
    posts = json.loads((tmp_path / "r.json").read_text())["posts"]
    assert [Path(p["path"]).name for p in posts] == ["a.md"]


@pytest.mark.kernel
def test_shards_follow_the_durations_of_an_earlier_report(tmp_path: Path) -> None:
    """A post that sleeps 2 s beside three quick ones: by the first run's report it has a
    shard to itself; by snippet count (all four weigh the same) it would share one."""
    blog = tmp_path / "blog"
    blog.mkdir()
    (blog / "a-slow.md").write_text(
        "```python runner:env=sklearn\nimport time\n\ntime.sleep(2)\nprint('slept')\n```\n")
    for name in ("b-quick.md", "c-quick.md", "d-quick.md"):
        (blog / name).write_text(f"```python runner:env=sklearn\nprint({name!r})\n```\n")
    first = run_cli("update", blog, "--no-cache", "--report", tmp_path / "first.json")
    assert first.returncode == 0, first.stdout + first.stderr

    def shard_posts(k: int, *more: str | Path) -> tuple[list[str], dict[str, Any]]:
        out = tmp_path / f"shard-{k}.json"
        done = run_cli("verify", blog, "--shard", f"{k}/2", *more, "--report", out)
        assert done.returncode == 0, done.stdout + done.stderr
        data = json.loads(out.read_text())
        return [Path(p["path"]).name for p in data["posts"]], data

    durations = ("--durations", tmp_path / "first.json")
    assert shard_posts(1, *durations)[0] == ["a-slow.md"]
    assert shard_posts(2, *durations)[0] == ["b-quick.md", "c-quick.md", "d-quick.md"]
    assert shard_posts(1)[0] == ["a-slow.md", "c-quick.md"]  # by count: path order
    # The cached run's report keeps the durations measured when the results were stored.
    measured = {(s["post"], s["line"]): s["duration_s"]
                for s in json.loads((tmp_path / "first.json").read_text())["snippets"]}
    _, cached = shard_posts(1, *durations)
    assert all(s["cached"] for s in cached["snippets"])
    assert {(s["post"], s["line"]): s["duration_s"] for s in cached["snippets"]} == {
        k: v for k, v in measured.items() if k[0].endswith("a-slow.md")}
    assert measured[str(blog / "a-slow.md"), 1] >= 2
