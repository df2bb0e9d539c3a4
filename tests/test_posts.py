"""Posts on disk, every fault caused for real: files that are not posts, sizes that lie, posts
behind symlinks, temp files of writers that died, locks held too long, posts changed while
their snippets ran."""

from __future__ import annotations

import fcntl
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from runner import posts
from runner.atomic import TooLarge, read_regular
from runner.config import Config, Figures
from runner.errors import PostError
from runner.markdown import parse
from runner.model import Output, SnippetResult
from runner.plan import plan
from runner.report import PostOutcome
from runner.settle import Planned, settle
from runner.writeback import RenderOptions
from tests.conftest import FIXTURES, without_waiting

POST = "# Title\n\n```python runner:env=sklearn\nprint(1)\n```\n"


ROOT = Path(__file__).resolve().parent.parent
READ = """
import sys
from pathlib import Path
from runner import posts
from runner.errors import PostError
try:
    posts.read(Path(sys.argv[1]))
except PostError as exc:
    print(exc)
"""


def bounded(command: list[str]) -> subprocess.CompletedProcess[str]:
    """`command` in a child that may not wait (a read blocked on a FIFO) nor grow (a read of
    /dev/zero) for long: a timeout, and 4 GiB of address space."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30))

    return subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, preexec_fn=limit)


@pytest.mark.parametrize("kind, message", [
    ("fifo", "is a FIFO, not a regular file: not read"),
    ("device", "is a character device, not a regular file: not read"),
    ("folder", "is a folder, not a post"),
])
def test_only_regular_files_are_posts(tmp_path: Path, kind: str, message: str) -> None:
    post = tmp_path / "p.md"
    if kind == "fifo":
        os.mkfifo(post)
    elif kind == "device":
        post.symlink_to("/dev/zero")
    else:
        post.mkdir()
    done = bounded(["-c", READ, str(post)])
    assert done.stdout == f"{post}: {message}\n", done.stderr


def test_a_run_reports_posts_that_are_not_files_and_never_waits(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo.md")
    (tmp_path / "zero.md").symlink_to("/dev/zero")
    (tmp_path / "folder.md").mkdir()
    report = tmp_path / "report.json"
    done = bounded(["-m", "runner", "verify", str(tmp_path), "--report", str(report)])
    assert done.returncode == 1, done.stderr
    outcomes = {Path(p["path"]).name: p for p in json.loads(report.read_text())["posts"]}
    assert sorted(outcomes) == ["fifo.md", "folder.md", "zero.md"]
    assert all(o["status"] == "error" for o in outcomes.values())
    assert "FIFO" in outcomes["fifo.md"]["error"]


def test_a_fifo_named_like_a_figure_is_not_waited_on(tmp_path: Path) -> None:
    figure = tmp_path / "p-1.png"
    os.mkfifo(figure)
    assert without_waiting(lambda: posts.read_bytes(figure), figure, "reading the figure") is None


def test_reading_stops_past_the_limit_when_the_size_lies(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """/proc files say they are 0 bytes long and hold more: the stat check cannot catch them,
    only a read that stops at the limit (+1 byte, to know it was passed)."""
    maps = Path("/proc/self/maps")
    assert maps.stat().st_size == 0 and len(maps.read_bytes()) > 200
    with pytest.raises(TooLarge) as caught:
        read_regular(maps, 100)
    assert caught.value.size == 101
    post = tmp_path / "p.md"
    post.symlink_to(maps)
    monkeypatch.setattr(posts, "MAX_BYTES", 100)
    with pytest.raises(PostError, match="over the 0 MB a post may be"):
        posts.read(post)


def test_update_through_a_symlink_writes_its_target(tmp_path: Path) -> None:
    (tmp_path / "drafts").mkdir()
    (tmp_path / "posts").mkdir()
    target = tmp_path / "drafts" / "real.md"
    target.write_text(POST)
    link = tmp_path / "posts" / "p.md"
    link.symlink_to("../drafts/real.md")
    posts.replace(link, POST, POST + "\nmore\n")
    assert link.is_symlink() and os.readlink(link) == "../drafts/real.md"
    assert target.read_text() == POST + "\nmore\n"
    assert sorted(os.listdir(tmp_path / "posts")) == ["p.md"]
    assert sorted(os.listdir(tmp_path / "drafts")) == ["real.md"]


KILLED_WRITER = """
import resource, signal, sys
from pathlib import Path
from runner.atomic import write_atomic
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it; a shell would not
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
write_atomic(Path(sys.argv[1]), b"x" * 100_000)
"""


def test_temp_files_of_a_writer_that_died_are_removed_by_a_later_run(tmp_path: Path) -> None:
    post = tmp_path / "p.md"
    post.write_text(POST)
    # A writer killed mid-write (file size limit: SIGXFSZ) leaves its temp file behind.
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(post)], cwd=ROOT)
    assert writer.wait(timeout=60) == -signal.SIGXFSZ
    [left] = [p for p in tmp_path.iterdir() if p != post]
    assert left.name.startswith(f".p.md.runner-{writer.pid}-") and left.name.endswith(".tmp")
    an_hour_ago = time.time() - 3600
    os.utime(left, (an_hour_ago, an_hour_ago))
    mine = tmp_path / f".p.md.runner-{os.getpid()}-abcd1234.tmp"  # a live writer's
    mine.write_text("partial")
    os.utime(mine, (an_hour_ago, an_hour_ago))
    young = tmp_path / f".p.md.runner-{writer.pid}-young123.tmp"  # not a minute old yet
    young.write_text("partial")
    assert posts.read(post) == POST
    assert len(list(tmp_path.iterdir())) == 4  # reading (verify) changes nothing there
    posts.replace(post, POST, POST + "\nmore\n")  # a write sweeps
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["p.md", mine.name, young.name])


HOLD_FOLDER_LOCK = """
import fcntl, os, sys, time
handle = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
fcntl.flock(handle, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(120)
"""


def test_a_post_lock_held_too_long_is_an_error_and_leaves_no_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    post = tmp_path / "p.md"
    post.write_text(POST)
    litter = set(Path(tempfile.gettempdir()).glob("runner-post-*.lock"))
    holder = subprocess.Popen([sys.executable, "-c", HOLD_FOLDER_LOCK, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        monkeypatch.setattr(posts, "LOCK_SECONDS", 0.5)
        started = time.monotonic()
        with pytest.raises(PostError) as caught:
            posts.replace(post, POST, POST + "\nmore\n")
        assert 0.5 <= time.monotonic() - started < 5
        assert str(caught.value) == (f"{post}: another run holds this post's lock for over "
                                     "0.5 s: not written")
        assert post.read_text() == POST
    finally:
        holder.kill()
        holder.wait()
    posts.replace(post, POST, POST + "\nmore\n")  # the lock went with its holder
    assert post.read_text() == POST + "\nmore\n"
    assert os.listdir(tmp_path) == ["p.md"]
    assert set(Path(tempfile.gettempdir()).glob("runner-post-*.lock")) == litter


def test_the_post_lock_is_exclusive(tmp_path: Path) -> None:
    """While a run compares and renames, another's lock on the post's folder waits."""
    post = tmp_path / "p.md"
    post.write_text(POST)
    handle = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        writer = threading.Thread(target=posts.replace, args=(post, POST, POST + "x\n"))
        writer.start()
        time.sleep(0.3)
        assert writer.is_alive() and post.read_text() == POST
    finally:
        os.close(handle)
    writer.join(5)
    assert post.read_text() == POST + "x\n"


def planned(path: Path, project: Config) -> Planned:
    post = parse(str(path), posts.read(path))
    return Planned(path, post, plan(post, project.envs, project.import_names))


def results(item: Planned) -> tuple[SnippetResult, ...]:
    return tuple(SnippetResult(s, "sklearn", "passed", Output("1\n"))
                 for session in item.sessions for s in session.snippets)


@pytest.mark.parametrize("recorded", [False, True], ids=["stale", "passed"])
def test_a_post_changed_on_disk_during_the_run_is_an_error(tmp_path: Path, project: Config,
                                                           recorded: bool) -> None:
    post = tmp_path / "p.md"
    post.write_text(POST)
    options = RenderOptions(project.patterns, project.max_output_lines)
    if recorded:  # the output is in the post already: an unchanged post would pass
        first = planned(post, project)
        assert settle(first, results(first), project, "update", options).written
    item = planned(post, project)
    fine = settle(item, results(item), project, "verify", options)
    assert fine.status == ("passed" if recorded else "stale")
    with post.open("a") as out:  # as if an editor (or a snippet) saved it meanwhile
        out.write("\nA new paragraph.\n")
    outcome = settle(item, results(item), project, "verify", options)
    assert (outcome.status, outcome.error) == ("error", "changed on disk during the run: "
                                                        "run again")
    assert outcome.snippets == results(item)
    written = settle(item, results(item), project, "update", options)
    assert written.status == "error" and not written.written
    assert post.read_text().endswith("\nA new paragraph.\n")


# --- figures: only into real folders inside the post's -----------------------------------------

DRAWN = b"\x89PNG drawn by this run"


def _figure_run(post: Path, project: Config, place: Figures | None = None) -> PostOutcome:
    """`update` of the figure fixture at `post`, its snippet drawing one figure."""
    from dataclasses import replace

    from runner.model import Part

    shutil.copy(FIXTURES / "posts" / "figure.md", post)
    config = replace(project, figures=place)
    item = planned(post, config)
    drawn = tuple(SnippetResult(s, "sklearn", "passed", Output(parts=(Part(
        "image", "<Figure size 640x480 with 1 Axes>", png=DRAWN),)))
        for session in item.sessions for s in session.snippets)
    options = RenderOptions(config.patterns, config.max_output_lines, figures=place)
    return settle(item, drawn, config, "update", options)


def _outside(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """A folder outside the project, holding files named like the post's figures."""
    outside = tmp_path / "outside"
    outside.mkdir()
    files = {"snippet-1-figure-1.png": b"someone else's picture",
             "snippet-9-figure-1.png": b"someone else's other picture", "notes.txt": b"mine"}
    for name, data in files.items():
        (outside / name).write_bytes(data)
    return outside, files


def _contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.mark.parametrize("where", ["beside the post", "under [tool.runner] figures",
                                   "a folder above it in [tool.runner] figures"])
def test_update_never_writes_nor_removes_through_a_symlinked_figure_folder(
        tmp_path: Path, project: Config, where: str) -> None:
    outside, files = _outside(tmp_path)
    content = tmp_path / "project" / "content" / "2024"
    content.mkdir(parents=True)
    static = tmp_path / "project" / "static" / "figures"
    place = None if where == "beside the post" else Figures(static, "/figures", content.parent)
    if place is None:
        (content / "figure").symlink_to(outside)  # content/2024/figure.md's folder
    elif where == "under [tool.runner] figures":
        (static / "2024").mkdir(parents=True)
        (static / "2024" / "figure").symlink_to(outside)
    else:
        static.mkdir(parents=True)
        (static / "2024").symlink_to(outside)
    post = content / "figure.md"
    outcome = _figure_run(post, project, place)
    assert (outcome.status, outcome.written) == ("error", False)
    assert outcome.error is not None and outcome.error.startswith("figure folder ")
    assert "is a symlink: figures are written only into real folders" in outcome.error
    assert "\n" not in outcome.error
    assert _contents(outside) == files  # nothing written there, nothing removed
    assert post.read_bytes() == (FIXTURES / "posts" / "figure.md").read_bytes()


def test_a_figure_that_is_a_symlink_is_an_error_and_stays_a_link(tmp_path: Path,
                                                                 project: Config) -> None:
    outside, files = _outside(tmp_path)
    (tmp_path / "posts" / "figure").mkdir(parents=True)
    drawn = tmp_path / "posts" / "figure" / "snippet-1-figure-1.png"
    drawn.symlink_to(outside / "snippet-1-figure-1.png")
    post = tmp_path / "posts" / "figure.md"
    outcome = _figure_run(post, project)
    assert (outcome.status, outcome.written) == ("error", False)
    assert outcome.error == (f"figure {drawn} is a symlink: figures are only regular files, "
                             "never read or written through a link")
    assert drawn.is_symlink() and _contents(outside) == files
    assert post.read_bytes() == (FIXTURES / "posts" / "figure.md").read_bytes()


def test_figures_go_into_real_folders_and_only_regular_files_are_removed(
        tmp_path: Path, project: Config) -> None:
    folder = tmp_path / "posts" / "figure"
    (folder / "snippet-8-figure-1.png").mkdir(parents=True)  # a folder so named: left alone
    (folder / "snippet-9-figure-1.png").write_bytes(b"no snippet draws this any more")
    outcome = _figure_run(tmp_path / "posts" / "figure.md", project)
    assert (outcome.status, outcome.written) == ("passed", True)
    assert sorted(os.listdir(folder)) == ["snippet-1-figure-1.png", "snippet-8-figure-1.png"]
    assert (folder / "snippet-1-figure-1.png").read_bytes() == DRAWN
    assert oct((folder / "snippet-1-figure-1.png").stat().st_mode & 0o777) == "0o644"
