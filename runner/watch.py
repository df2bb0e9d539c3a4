"""`watch`: run the posts once, then run each post again when it is saved.

A pure core, `to_rerun(changes, targets)`: which changed paths are posts to run again. A loop
at the edge, `watch`: the file system's own events (watchfiles: inotify, FSEvents, ...; no
polling), grouped while an editor writes (a temp file and a rename are one save), and a post
runs again only when its bytes are not those last run or written by the runner itself, so an
`--update` that writes output blocks and figures never sets off another run.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import watchfiles

from runner import posts
from runner.atomic import NotAFile, TooLarge, read_regular
from runner.config import Config
from runner.markdown import POST_SUFFIXES
from runner.report import Run
from runner.run import Options, run_posts

Changes = Iterable[tuple[watchfiles.Change, str]]
IDLE_MS = 500  # how often the loop wakes when nothing changes (to see `stop`)


@dataclass(frozen=True)
class Targets:
    """What is watched: post files and folders of posts, each resolved -> as the user named it
    (results are reported under the name given)."""

    files: dict[Path, Path]
    folders: dict[Path, Path]

    @classmethod
    def of(cls, named: Sequence[Path]) -> Targets:
        folders = {p.resolve(): p for p in named if p.is_dir()}
        return cls({p.resolve(): p for p in named if not p.is_dir()}, folders)

    def roots(self) -> list[Path]:
        """The folders to watch: a post file's folder (an editor's rename replaces the file)."""
        return sorted({*self.folders, *(path.parent for path in self.files)})


def to_rerun(changes: Changes, targets: Targets) -> list[Path]:
    """The posts among changed paths, as named, in a stable order: a post file named, or a file
    named like a post (`.md`, `.markdown`, `.mdx`, not hidden) under a folder named. Editors'
    swap, backup and lock files, the runner's temp files and figures are none of these; a
    path that was only deleted is not run."""
    kinds: dict[Path, set[watchfiles.Change]] = {}
    for kind, text in changes:
        kinds.setdefault(Path(text), set()).add(kind)
    due: dict[Path, None] = {}
    for path, seen in sorted(kinds.items()):
        if seen != {watchfiles.Change.deleted} and (name := _named(path, targets)) is not None:
            due[name] = None
    return list(due)


def _named(path: Path, targets: Targets) -> Path | None:
    if path in targets.files:
        return targets.files[path]
    if path.suffix not in POST_SUFFIXES or path.name.startswith("."):
        return None
    for folder, named in targets.folders.items():
        if path.is_relative_to(folder):
            return named / path.relative_to(folder)
    return None


def watch(paths: Sequence[str | Path], config: Config, options: Options,
          on_run: Callable[[Run], None], stop: threading.Event | None = None,
          runs: int | None = None) -> None:
    """Run the posts (none named: the project's posts/), then each post again when saved, until
    `stop` is set, `runs` runs are done (the first one counted), or Ctrl-C (KeyboardInterrupt
    while waiting; during a run, `run_posts` ends it). A missing path is a UsageError before
    anything runs."""
    named = [Path(p) for p in paths] or [posts.relative(config.posts)]
    targets, last = Targets.of(named), _Bytes()
    due, done = posts.find(named), 0
    for changes in watchfiles.watch(*targets.roots(), watch_filter=None, stop_event=stop,
                                    rust_timeout=IDLE_MS, yield_on_timeout=True):
        due += [path for path in to_rerun(changes, targets) if last.changed(path)]
        if not due:
            continue
        last.before(due)
        run = run_posts(due, config, options)
        last.after(run)
        on_run(run)
        due, done = [], done + 1
        if runs is not None and done >= runs:
            return


class _Bytes:
    """A digest of each post's bytes as last run, or as the runner wrote them."""

    def __init__(self) -> None:
        self.digests: dict[Path, str | None] = {}

    def changed(self, path: Path) -> bool:
        now = _digest(path)
        return now is not None and now != self.digests.get(path)

    def before(self, paths: Iterable[Path]) -> None:
        self.digests.update((path, _digest(path)) for path in paths)

    def after(self, run: Run) -> None:
        self.before(Path(post.path) for post in run.posts if post.written)


def _digest(path: Path) -> str | None:
    """None when gone (deleted, or an editor's rename under way); never a wait on a FIFO."""
    try:
        return hashlib.sha256(read_regular(path, posts.MAX_BYTES)).hexdigest()
    except (NotAFile, TooLarge) as exc:  # run, to report it, once for each way it is wrong
        return str(exc)
    except OSError:
        return None
