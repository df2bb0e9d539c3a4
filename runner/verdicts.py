"""Verdicts: a passed post's outcome, replayed while nothing it was decided from has changed.

A fully cached `verify` would still read, parse, plan, look up and re-render every post: at
blog scale, most of its time. Once a post passes, its outcome is kept with what decided it
(as Quarto's freeze keeps a page's results, or make its prerequisites):

- in its name: the post's path (as given and resolved), the options that change an outcome,
  the project's configuration (each env's lock hash, [tool.runner]), the runner's version and
  its own source files, the Markdown and YAML parsers' files;
- the post's bytes (sha256);
- each file the decision read, by its stat (device, inode, size, mtime and ctime in ns: any
  write changes ctime, which no tool sets back): the execution cache's entries its results
  came from, the files beside the post that its snippets see, its figures; and the names in
  the two folders whose listing decides (files beside the post, the post's figure folder: a new
  data file, an orphan figure).

A later run whose post and files all match takes the outcome as it is, its snippets marked
cached: nothing parsed, looked up or rendered. Anything else takes the ordinary path, which
keeps a new verdict when the post passes again. Only passes are kept, as in the execution
cache: a failed, stale or unreadable post always runs again, and a run with parameters or
`--check-determinism` neither reads nor keeps verdicts. A verdict that cannot be read back
is a miss, removed; one that cannot be written is not kept. Never an error.

A verdict no run has replayed or kept for as long as the cache keeps an unused entry goes
when the cache is swept (`sweep`); the others keep the cache entries they name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from runner import __version__, codec
from runner.atomic import Signature, read_regular, seen, signature, write_atomic
from runner.beside import Beside, files_beside
from runner.cache import unused
from runner.model import SnippetResult
from runner.report import PostOutcome
from runner.writeback import FIGURE_GLOB

FORMAT = 2  # 2: a `Verdict`, its results whole as `runner.codec` writes them
MAX_BYTES = 64 * 2**20  # a verdict larger than this is a miss (and is removed)
PARSERS = ("markdown_it", "yaml")  # their sources decide how a post parses
VERDICT_NAME = re.compile(r"\A[0-9a-f]{64}\.json\Z")


def fingerprint(value: Any) -> Any:
    """`value` (a Config, options, ...) as plain JSON data, the same in every process: sets
    sorted, patterns as their text, paths as strings, dataclasses as their fields."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: fingerprint(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return sorted([str(k), fingerprint(v)] for k, v in value.items())
    if isinstance(value, set | frozenset):
        return sorted(json.dumps(fingerprint(v), sort_keys=True) for v in value)
    if isinstance(value, list | tuple):
        return [fingerprint(v) for v in value]
    if isinstance(value, re.Pattern):
        return [value.pattern, value.flags]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _sources() -> list[Any]:
    """The runner's own files and the parsers' (size and mtime): a runner changed in place
    (an editable install, a new release) replays nothing it decided before."""
    files = sorted(Path(__file__).parent.glob("*.py"))
    for name in PARSERS:
        with contextlib.suppress(ImportError, ValueError):
            spec = importlib.util.find_spec(name)
            if spec is not None and spec.origin:
                files.append(Path(spec.origin))
    found = []
    for path in files:
        with contextlib.suppress(OSError):
            info = path.stat()
            found.append([str(path), info.st_size, info.st_mtime_ns])
    return found


@dataclasses.dataclass(frozen=True)
class Figures:
    """A post's figure folder as the run saw it before the post was settled (its figures
    compared by pixels): each figure's name and its `atomic.seen`."""

    folder: Path
    names: tuple[str, ...] = ()
    seen: tuple[Signature, ...] = ()


def figures_seen(folder: Path) -> Figures:
    """The post's figure folder now, before its figures are read (`posts.freshen`)."""
    names = tuple(_drawn(folder))
    return Figures(folder, names, tuple(seen(folder / name) for name in names))


Seen = tuple[Path, Signature]  # a file, and its stat when the run read it (`atomic.seen`)


class Verdicts:
    """The verdicts of one run: `replay` before a post is parsed, `keep` once it passed.

    What a verdict records of each file is its stat when the run read it, never later: the
    stat travels with what was read (a cache entry's with its job, the files beside a post in
    their `Beside`, the figures in their `Figures`), so a file changed while the run went on
    is never vouched for by results made from its old bytes; and a file changed within
    `atomic.RACY_NS` of that moment is not vouched for at all (`atomic.seen`)."""

    def __init__(self, folder: Path, decided_by: Any) -> None:
        self.folder = folder
        decided = json.dumps([FORMAT, __version__, sys.version, _sources(), decided_by],
                             sort_keys=True)
        self.decided_by = hashlib.sha256(decided.encode()).hexdigest()
        self._listings: dict[Path, list[str]] = {}  # once a run: a folder of posts, one listing
        self.used: set[str] = set()  # the verdicts this run replayed or kept (absolute paths)
        self.named: set[str] = set()  # the files those name (absolute paths)

    def _path(self, post: Path) -> Path:
        name = json.dumps([str(post), os.path.abspath(post), self.decided_by])
        return self.folder / f"{hashlib.sha256(name.encode()).hexdigest()}.json"

    def _listing(self, folder: Path) -> list[str]:
        """The files beside the posts of `folder` (`beside.files_beside`), listed once a run."""
        if folder not in self._listings:
            self._listings[folder] = [p.name for p in files_beside(folder)]
        return self._listings[folder]

    def replay(self, post: Path, text: str) -> PostOutcome | None:
        """The post's kept outcome, when its text and every file it was decided from are as
        they were; else None."""
        path = self._path(post)
        try:
            verdict = _read(path)
            if verdict.post != _digest(text) or not self._unchanged(verdict):
                return None
            outcome = verdict.outcome.outcome(str(post))
            self._use(path, [file for file, _ in verdict.files])
            return outcome
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, RecursionError):  # TypeError: none known: a miss
            _remove(path)  # unreadable: a miss, and gone
            return None

    def _unchanged(self, verdict: Verdict) -> bool:
        beside, figures = (Path(folder) for folder in verdict.folders)
        return ((verdict.beside is None or self._listing(beside) == list(verdict.beside))
                and _drawn(figures) == list(verdict.figures)
                and all(signature(Path(p)) == list(sig) for p, sig in verdict.files))

    def keep(self, post: Path, text: str, outcome: PostOutcome, entries: Sequence[Seen],
             beside: Beside | None, figures: Figures) -> None:
        """Keep a passed post's outcome with what decided it, as the run saw it: `entries` its
        sessions' cache entries, `beside` the files beside it (None: no session of it ran, so
        none decided anything), `figures` its figure folder. Not kept where any of them was
        absent or too recent when it was seen."""
        folder = post.parent
        given = beside or Beside(folder)
        files = [*entries,
                 *((folder / name, sig) for (name, *_), sig in zip(given.files, given.seen,
                                                                   strict=True)),
                 *((figures.folder / name, sig) for name, sig in zip(figures.names,
                                                                     figures.seen, strict=True))]
        if any(sig is None for _, sig in files):
            return
        verdict = Verdict(_digest(text), (str(folder), str(figures.folder)),
                          None if beside is None else tuple(name for name, *_ in beside.files),
                          figures.names, tuple((str(p), tuple(sig or ())) for p, sig in files),
                          Kept.of(outcome))
        data = json.dumps(codec.encode(verdict))  # ASCII: a lone surrogate is `\udXXX`
        with contextlib.suppress(OSError):
            self.folder.mkdir(parents=True, exist_ok=True)
            write_atomic(self._path(post), data.encode(), durable=False)
            self._use(self._path(post), [str(p) for p, _ in files])

    def _use(self, verdict: Path, files: list[str]) -> None:
        self.used.add(os.path.abspath(verdict))
        self.named.update(os.path.abspath(file) for file in files)

    def forget(self, post: Path) -> None:
        """A post that did not pass: its old verdict (if any) goes."""
        _remove(self._path(post))


def sweep(folder: Path, used: set[str], now: float) -> set[str]:
    """Remove the verdicts of `folder` that no run replayed or kept for as long as the cache
    keeps an unused entry (`cache.unused`), except those `used` by this run (`Verdicts.used`);
    the files the others name (absolute paths), whose cache entries must stay (those of the
    `used` ones are in `Verdicts.named`). A verdict that cannot be read is left to `replay`
    (it removes it). Never raises."""
    named: set[str] = set()
    with contextlib.suppress(OSError), os.scandir(folder) as verdicts:
        for item in verdicts:
            if not VERDICT_NAME.match(item.name):  # only what `keep` makes is ever removed
                continue
            with contextlib.suppress(OSError, ValueError, TypeError, RecursionError):
                if os.path.abspath(item.path) in used:
                    continue
                info = item.stat(follow_symlinks=False)
                if unused(info, now):
                    os.unlink(item.path)
                    continue
                named.update(os.path.abspath(file) for file, _ in _read(Path(item.path)).files)
                # this read is no use of the verdict: its atime goes back to what it was
                os.utime(item.path, ns=(info.st_atime_ns, info.st_mtime_ns),
                         follow_symlinks=False)
    return named


def _drawn(folder: Path) -> list[str]:
    """The figure files in a post's figure folder (what `posts.freshen` compares)."""
    return [p.name for p in sorted(folder.glob(FIGURE_GLOB))]


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


# --- what a verdict holds ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Kept:
    """What a verdict keeps of a passed post's outcome: the fields of `PostOutcome` a replay
    gives back (the others are the post's path, or what a kept pass never has: an error, a diff,
    output written, parameters, a fresh rendering). Its results as `runner.codec` writes them."""

    status: Literal["passed"]
    stamp_stale: bool
    snippets: tuple[SnippetResult, ...]

    @classmethod
    def of(cls, outcome: PostOutcome) -> Kept:
        if outcome.status != "passed":
            raise ValueError(f"a {outcome.status} post is never kept")
        return cls(outcome.status, outcome.stamp_stale, outcome.snippets)

    def outcome(self, path: str) -> PostOutcome:
        """The post's outcome again: its snippets named by `path` (as this run names the post,
        which names the verdict too) and marked cached."""
        results = tuple(_replayed(result, path) for result in self.snippets)
        return PostOutcome(path, self.status, snippets=results, stamp_stale=self.stamp_stale)


def _replayed(result: SnippetResult, path: str) -> SnippetResult:
    if result.status == "failed" or result.not_run_after is not None:
        raise ValueError("a failed snippet, or one not run after a failure, is never kept")
    return dataclasses.replace(result, snippet=dataclasses.replace(result.snippet, path=path),
                               cached=True)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One verdict's file (see `Verdicts.keep`), read and written by `runner.codec`."""

    post: str  # sha256 of the post's text
    folders: tuple[str, str]  # the post's folder, its figure folder
    beside: tuple[str, ...] | None  # the names of the files beside it (None: none decided)
    figures: tuple[str, ...]  # the names in its figure folder
    files: tuple[tuple[str, tuple[int, ...]], ...]  # each file read, its `atomic.signature`
    outcome: Kept


def _read(path: Path) -> Verdict:
    """The verdict in `path`: OSError, ValueError (`codec.Malformed`), RecursionError if it
    cannot be read back."""
    return codec.decode(Verdict, json.loads(read_regular(path, MAX_BYTES,
                                                        follow_symlinks=False)))
