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
import functools
import hashlib
import importlib.util
import json
import os
import re
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

from runner import __version__
from runner.atomic import Signature, read_regular, seen, signature, write_atomic
from runner.beside import Beside, files_beside
from runner.cache import part_kind, unused
from runner.model import ErrorInfo, Markers, Output, Part, Region, Snippet, SnippetResult
from runner.report import PostOutcome
from runner.writeback import FIGURE_GLOB

FORMAT = 1
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
            data = json.loads(read_regular(path, MAX_BYTES, follow_symlinks=False))
            if data["post"] != _digest(text) or not self._unchanged(data):
                return None
            outcome = _outcome(str(post), data["outcome"])
            self._use(path, [file for file, _ in data["files"]])
            return outcome
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            _remove(path)  # unreadable: a miss, and gone
            return None

    def _unchanged(self, data: dict[str, Any]) -> bool:
        beside, figures = (Path(_typed(folder, str)) for folder in data["folders"])
        return ((data["beside"] is None or self._listing(beside) == data["beside"])
                and _drawn(figures) == data["figures"]
                and all(signature(Path(p)) == sig for p, sig in data["files"]))

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
        data = {"post": _digest(text), "folders": [str(folder), str(figures.folder)],
                "beside": None if beside is None else [name for name, *_ in beside.files],
                "figures": list(figures.names),
                "files": [[str(p), sig] for p, sig in files],
                "outcome": _outcome_data(outcome)}
        with contextlib.suppress(OSError):
            self.folder.mkdir(parents=True, exist_ok=True)
            write_atomic(self._path(post), json.dumps(data).encode(), durable=False)
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
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError, RecursionError):
                if os.path.abspath(item.path) in used:
                    continue
                info = item.stat(follow_symlinks=False)
                if unused(info, now):
                    os.unlink(item.path)
                    continue
                data = json.loads(read_regular(Path(item.path), MAX_BYTES,
                                               follow_symlinks=False))
                named.update(os.path.abspath(_typed(file, str)) for file, _ in data["files"])
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


# --- an outcome as JSON and back ---------------------------------------------------------------


def _outcome_data(outcome: PostOutcome) -> dict[str, Any]:
    return {"status": outcome.status, "stamp_stale": outcome.stamp_stale,
            "snippets": [_result_data(r) for r in outcome.snippets]}


def _result_data(result: SnippetResult) -> dict[str, Any]:
    snippet = result.snippet
    return {
        "snippet": {**{f.name: getattr(snippet, f.name) for f in dataclasses.fields(snippet)
                       if f.name not in ("markers", "output")},
                    "markers": dataclasses.asdict(snippet.markers),
                    "output": None if snippet.output is None else [snippet.output.start,
                                                                   snippet.output.end]},
        "env": result.env, "status": result.status, "reason": result.reason,
        "duration_s": result.duration_s, "not_run_after": result.not_run_after,
        "error": None if result.error is None else dataclasses.asdict(result.error),
        "output": {"stdout": result.output.stdout, "stderr": result.output.stderr,
                   "parts": [[p.kind, p.text, p.html, p.png.hex()] for p in result.output.parts]},
    }


def _outcome(path: str, data: dict[str, Any]) -> PostOutcome:
    if data["status"] != "passed":
        raise ValueError(f"status {data['status']!r} is never kept")
    results = tuple(_result(path, item) for item in data["snippets"])
    return PostOutcome(path, "passed", snippets=results,
                       stamp_stale=_typed(data["stamp_stale"], bool))


def _result(path: str, item: dict[str, Any]) -> SnippetResult:
    """A kept result, each value of the type it was kept as (else TypeError: a miss)."""
    given = item["snippet"]
    region = given["output"]
    snippet = Snippet(path, _typed(given["line"], int), _typed(given["code"], str),
                      _fields(Markers, given["markers"]), _typed(given["hidden"], bool),
                      _typed(given["anchor"], int), _typed(given["prefix"], str),
                      None if region is None else Region(*_ints(region, 2)),
                      _typed(given["start"], int))
    output = item["output"]
    parts = tuple(Part(part_kind(kind), _typed(text, str), _typed(html, str), bytes.fromhex(png))
                  for kind, text, html, png in output["parts"])
    if item["status"] not in ("passed", "skipped"):
        raise ValueError(f"status {item['status']!r} is never kept")
    error = item["error"]
    return SnippetResult(
        snippet, _typed(item["env"], str), item["status"],
        Output(_typed(output["stdout"], str), _typed(output["stderr"], str), parts),
        None if error is None else _fields(ErrorInfo, error),
        reason=_typed(item["reason"], str | None),
        duration_s=float(_typed(item["duration_s"], int | float)), cached=True,
        not_run_after=_typed(item["not_run_after"], int | None))


_Kept = TypeVar("_Kept")


def _fields(cls: type[_Kept], values: dict[str, Any]) -> _Kept:
    """`cls(**values)`, each value checked against its field's type (`str | None`, ...)."""
    hints = _hints(cast(type, cls))
    for name, value in values.items():
        if name not in hints:
            raise TypeError(f"{cls.__name__} has no field {name!r}")
        _typed(value, float | int | None if hints[name] == float | None else hints[name])
    return cls(**values)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _typed(value: Any, kind: Any) -> Any:
    if not isinstance(value, kind):
        raise TypeError(f"{type(value).__name__} where {kind} was kept")
    return value


def _ints(values: Sequence[Any], count: int) -> list[int]:
    if len(values) != count:
        raise ValueError(f"{len(values)} numbers where {count} were kept")
    return [_typed(v, int) for v in values]
