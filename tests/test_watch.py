"""`watch`: the path filter (pure), the loop in a thread, and `python -m runner watch` as an
author runs it, with real saves of a post and real kernels."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from watchfiles import Change

from runner.config import load
from runner.report import Run
from runner.run import Options
from runner.watch import Targets, to_rerun
from runner.watch import watch as watch_loop
from tests.conftest import ROOT, run_cli

DEADLINE_S = 120.0  # a run of one small post, env built, with room for a slow machine
RECORDED = ("```python runner:env=sklearn\nprint(1)\n```\n\n*Verified output:*\n\n"
            "```text runner:output\n1\n```\n\n[//]: # (end of verified output)\n")


# --- which changes are posts to run again (pure) -----------------------------------------------


def targets() -> Targets:
    return Targets(files={Path("/blog/drafts/one.md"): Path("drafts/one.md")},
                   folders={Path("/blog/posts"): Path("posts")})


def test_named_posts_and_posts_under_named_folders_are_run_as_named() -> None:
    changes = {(Change.modified, "/blog/drafts/one.md"), (Change.added, "/blog/posts/b.mdx"),
               (Change.modified, "/blog/posts/2024/a.md"), (Change.added, "/blog/posts/c.txt")}
    assert to_rerun(changes, targets()) == [Path("drafts/one.md"), Path("posts/2024/a.md"),
                                           Path("posts/b.mdx")]


@pytest.mark.parametrize("path", [
    "/blog/drafts/two.md",  # beside a named post, not named
    "/blog/posts/.x.md.runner-4242-abcd1234.tmp",  # the runner's own temp file
    "/blog/posts/x/snippet-1-figure-1.png",  # a figure --update wrote
    "/blog/posts/.x.md.swp", "/blog/posts/x.md~", "/blog/posts/.#x.md", "/blog/posts/4913",
    "/elsewhere/x.md",
])
def test_files_that_are_not_posts_are_ignored(path: str) -> None:
    assert to_rerun({(Change.added, path), (Change.modified, path)}, targets()) == []


def test_a_deleted_post_is_not_run_but_one_replaced_by_a_rename_is() -> None:
    gone = {(Change.deleted, "/blog/posts/a.md")}
    renamed = gone | {(Change.added, "/blog/posts/a.md")}
    assert to_rerun(gone, targets()) == []
    assert to_rerun(renamed, targets()) == [Path("posts/a.md")]


def test_targets_watch_a_named_posts_folder_and_the_folder_of_a_named_post(
        tmp_path: Path) -> None:
    post, folder = tmp_path / "a" / "p.md", tmp_path / "b"
    post.parent.mkdir()
    folder.mkdir()
    post.write_text("x\n", encoding="utf-8")
    assert Targets.of([post, folder]).roots() == sorted([post.parent.resolve(), folder.resolve()])


# --- the loop, in a thread (a skipped snippet starts no kernel) --------------------------------


def test_the_loop_runs_once_then_on_each_real_change_until_stopped(tmp_path: Path) -> None:
    post = tmp_path / "p.md"
    post.write_text("```python runner:skip\nprint(1)\n```\n", encoding="utf-8")
    runs: queue.Queue[Run] = queue.Queue()
    stop = threading.Event()
    loop = threading.Thread(target=watch_loop, args=([post], load(ROOT), Options(jobs=1),
                                                     runs.put, stop))
    loop.start()
    try:
        assert runs.get(timeout=DEADLINE_S).posts[0].status == "passed"
        post.write_text("```python runner:skip=\"later\"\nprint(1)\n```\n", encoding="utf-8")
        second = runs.get(timeout=DEADLINE_S)
        assert second.snippets[0].reason == "later"
        post.write_bytes(post.read_bytes())  # saved, same bytes: nothing to run
        (tmp_path / "notes.txt").write_text("not a post\n", encoding="utf-8")
        with pytest.raises(queue.Empty):
            runs.get(timeout=2.0)
    finally:
        stop.set()
        loop.join(timeout=DEADLINE_S)
    assert not loop.is_alive()


@pytest.mark.parametrize(("args", "says"), [
    (["/no/such/post.md"], "no such post or folder"),
    (["--shard", "1/2"], "--shard does not apply"),
])
def test_watch_called_wrongly_is_a_usage_error(args: list[str], says: str) -> None:
    result = run_cli("watch", *args)
    assert result.returncode == 2
    assert says in result.stderr


# --- `python -m runner watch`, a post saved for real -------------------------------------------


class Watching:
    """`python -m runner watch ARGS` in the project, its stdout read line by line."""

    def __init__(self, *args: str | Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "runner", "watch", *map(str, args)], cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert self.process.stdout is not None
        threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True).start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.lines.put(line.rstrip("\n"))

    def until(self, wanted: Callable[[str], bool], seconds: float = DEADLINE_S) -> str:
        """The first line from now on that is wanted; a failure with what came when none
        does in time."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            self.seen.append(line)
            if wanted(line):
                return line
        raise AssertionError(f"nothing wanted within {seconds:g} s; stdout: {self.seen}")

    def lines_for(self, seconds: float) -> list[str]:
        end, got = time.monotonic() + seconds, []
        while (left := end - time.monotonic()) > 0:
            try:
                got.append(self.lines.get(timeout=left))
            except queue.Empty:
                break
        self.seen += got
        return got

    def interrupt(self) -> int:
        """Ctrl-C, as a terminal sends it; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout=30)
        finally:
            if self.process.poll() is None:
                self.process.kill()


def save(path: Path, text: str) -> None:
    """As an editor saves: a temp file beside the post, then a rename over it."""
    temp = path.with_name(f".{path.name}.swp")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)


def status_of(post: Path) -> Callable[[str], bool]:
    return lambda line: line.startswith(f"{post}: ")


@pytest.mark.kernel
def test_watch_reports_a_post_made_stale_by_a_save_with_its_diff(tmp_path: Path) -> None:
    post = tmp_path / "p.md"
    post.write_text(RECORDED, encoding="utf-8")
    watching = Watching(post)
    try:
        assert watching.until(status_of(post)) == f"{post}: passed"
        post.write_text(RECORDED.replace("print(1)", "print(2)"), encoding="utf-8")
        assert "stale" in watching.until(status_of(post))
        assert watching.until(lambda line: line == "+2", 5.0)
        assert "-1" in watching.seen
    finally:
        code = watching.interrupt()
    assert code == 0
    assert post.read_text(encoding="utf-8") == RECORDED.replace("print(1)", "print(2)")


@pytest.mark.kernel
def test_watch_update_writes_the_new_output_and_its_own_write_runs_nothing(
        tmp_path: Path) -> None:
    post = tmp_path / "p.md"
    post.write_text("```python runner:env=sklearn\nprint(1)\n```\n", encoding="utf-8")
    watching = Watching(post, "--update")
    try:
        assert watching.until(status_of(post)) == f"{post}: passed (output written)"
        assert post.read_text(encoding="utf-8") == RECORDED
        save(post, RECORDED.replace("print(1)", "print(2)"))
        assert watching.until(status_of(post)) == f"{post}: passed (output written)"
        assert "```text runner:output\n2\n```" in post.read_text(encoding="utf-8")
        later = watching.lines_for(3.0)  # the runner's own writes set off no run
    finally:
        code = watching.interrupt()
    assert [line for line in later if status_of(post)(line)] == []
    assert sum(map(status_of(post), watching.seen)) == 2
    assert code == 0
