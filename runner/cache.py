"""Execution cache: a session's results, keyed by everything that decides them.

The key (`decides.session_key`) hashes everything a session's results depend on. Only
sessions whose every snippet passed (or was skipped on purpose) are stored, as jupyter-cache
does: a failure is always run again. Each entry is one JSON file written by an
atomic rename under a file lock, so two runs at once never see half an entry; an entry that
cannot be read back (corrupt, too large, a folder, a FIFO, a symlink) is deleted with a warning
and the session runs.

The cache only grows when a run stores, so such a run sweeps it, once a day at most (`sweep`):
an entry no run has read or written for MAX_AGE_S goes (as jupyter-cache's limit, or ccache's
cleanup), unless a kept verdict still names it. Losing one costs a rerun, never a result.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from runner import codec
from runner.atomic import read_regular, remove_tree, write_atomic
from runner.codec import Change
from runner.model import Session, Snippet, SnippetResult
from runner.portable import anchored, unanchored

FORMAT = 3  # 2: output names the post's lines by snippet (portable.anchored); 3: an `Entry`,
# each result whole as `runner.codec` writes it
MAX_ENTRY_BYTES = 64 * 2**20  # an entry larger than this is a miss (and is removed)
LOCK_SECONDS = 10.0  # waiting longer for an entry's lock: the results are not stored
MAX_AGE_S = 30 * 86400.0  # an entry unused this long is swept away
SWEEP_EVERY_S = 86400.0  # a cache folder is swept once a day at most


@dataclass(frozen=True)
class Entry:
    """What an entry holds: its key, and its session's results as they were stored (their
    texts `anchored`); a hit takes each result with the session's snippet as it is now."""

    key: str
    snippets: tuple[SnippetResult, ...]


def print_warning(text: str) -> None:
    """`store`'s warnings where its caller names no other way: one line on stderr."""
    print(f"runner: {text}", file=sys.stderr, flush=True)


def load(folder: Path, key: str, session: Session,
         warn: Callable[[str], None]) -> tuple[SnippetResult, ...] | None:
    """The session's stored results, or None (a miss). An entry that is not a regular file
    (a folder, a FIFO, a symlink: none is opened or followed), is over MAX_ENTRY_BYTES, or does
    not parse is a miss with one warning, and is removed: it can neither stop, hang nor fool
    a run."""
    path = entry(folder, key)
    try:
        data = json.loads(read_regular(path, MAX_ENTRY_BYTES, follow_symlinks=False))
        stored = codec.decode(Entry, data)
        if stored.key != key or len(stored.snippets) != len(session.snippets):
            raise ValueError("entry does not match its key")
        return tuple(_replayed(result, snippet, session.snippets, session.env)
                     for snippet, result in zip(session.snippets, stored.snippets, strict=True))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
        warn(f"discarding a corrupt cache entry {path}: {exc}")
        _remove(path)
        return None


def store(folder: Path, key: str, results: Sequence[SnippetResult],
          warn: Callable[[str], None] = print_warning) -> bool:
    """Store a session's results when every snippet passed (or was skipped on purpose): one
    atomic rename under the entry's lock (its `.lock` file lives in the cache folder). Whatever
    stands at the entry's path (a folder, a FIFO) is replaced; a lock held for over
    LOCK_SECONDS, or a write that fails, skips storing with a warning: never an error. True
    when stored."""
    if any(r.status == "failed" or r.not_run_after is not None for r in results):
        return False
    from filelock import FileLock, Timeout  # here: a run the cache answers never stores

    path = entry(folder, key)
    snippets = [r.snippet for r in results]
    kept = Entry(key, tuple(_retold(r, lambda text: anchored(text, snippets)) for r in results))
    data = json.dumps(codec.encode(kept))  # ASCII: a lone surrogate a kernel sent is `\udXXX`
    try:
        _make_room(path.parent, folder=True)
        with FileLock(str(path) + ".lock", timeout=LOCK_SECONDS):
            _make_room(path, folder=False)
            write_atomic(path, data.encode("utf-8"), durable=False)  # a torn entry is a miss
    except Timeout:
        warn(f"not caching {path}: its lock was held for over {LOCK_SECONDS:g} s")
    except OSError as exc:
        warn(f"not caching {path}: {exc.strerror or exc}")
    else:
        return True
    return False


def _make_room(path: Path, folder: bool) -> None:
    """`path` made ready to be a folder (mkdir) or an entry (renamed onto) by removing whatever
    else stands there: a rename cannot replace a folder, and a FIFO or a symlink at an entry's
    path would lend its mode (or its target's) to the new entry."""
    with contextlib.suppress(FileNotFoundError):
        mode = path.lstat().st_mode
        if not (stat.S_ISDIR(mode) if folder else stat.S_ISREG(mode)):
            _remove(path)
    if folder:
        path.mkdir(parents=True, exist_ok=True)


def _remove(path: Path) -> None:
    """Remove a bad entry: a folder with its contents, anything else (a symlink: the link
    only) by unlink (`remove_tree`, which never follows a link nor raises)."""
    remove_tree(path)


def sweep_due(folder: Path, now: float) -> bool:
    """Whether `folder` is due a sweep (its `.swept` stamp is a day old, or absent); if so the
    stamp is renewed at once, so that runs at the same time do not all sweep."""
    stamp = folder / ".swept"
    with contextlib.suppress(FileNotFoundError):
        if now - stamp.stat().st_mtime < SWEEP_EVERY_S:
            return False
    try:
        stamp.touch()
        os.utime(stamp, (now, now))
    except OSError:
        return False
    return True


def unused(info: os.stat_result, now: float) -> bool:
    """Whether a file of the cache (an entry, a verdict) was neither read nor written for
    MAX_AGE_S: by atime, or where a file system does not keep it, by when it was written."""
    return now - max(info.st_atime, info.st_mtime) >= MAX_AGE_S


def sweep(folder: Path, keep: set[str], now: float) -> int:
    """Remove the entries of `folder` (with their lock files) that are `unused` and not in
    `keep` (absolute paths: this run's, those kept verdicts
    name), and the lock files left without an entry as long. Never raises; the count removed."""
    removed = 0
    with contextlib.suppress(OSError), os.scandir(folder) as shelves:
        for shelf in shelves:
            if len(shelf.name) != 2 or not shelf.is_dir(follow_symlinks=False):
                continue
            with contextlib.suppress(OSError), os.scandir(shelf.path) as entries:
                for item in entries:
                    removed += _swept(item, keep, now)
    return removed


ENTRY_NAME = re.compile(r"\A([0-9a-f]{2})[0-9a-f]{62}\.json(\.lock)?\Z")  # key.json, its lock


def _swept(item: os.DirEntry[str], keep: set[str], now: float) -> int:
    """Only what `store` makes is ever removed: a file named by a key, in the folder named by
    the key's first two digits (a cache folder set to a folder of other files loses none)."""
    name = ENTRY_NAME.match(item.name)
    if (name is None or name.group(1) != os.path.basename(os.path.dirname(item.path))
            or os.path.abspath(item.path.removesuffix(".lock")) in keep):
        return 0
    with contextlib.suppress(OSError):
        if not unused(item.stat(follow_symlinks=False), now):
            return 0
        if item.name.endswith(".lock") and os.path.lexists(item.path.removesuffix(".lock")):
            return 0  # goes with its entry
        os.unlink(item.path)
        if not item.name.endswith(".lock"):
            with contextlib.suppress(OSError):
                os.unlink(item.path + ".lock")
        return 1
    return 0


def entry(folder: Path, key: str) -> Path:
    """Where a session's entry is: named by its key and the entry FORMAT, so an entry of
    another shape is never read (a quiet miss, swept in time)."""
    name = hashlib.sha256(f"{FORMAT}\0{key}".encode()).hexdigest()
    return folder / name[:2] / f"{name}.json"


def _retold(result: SnippetResult, change: Change) -> SnippetResult:
    """`result` with `change` applied to every text of its output and its error (`codec.retext`):
    how an entry anchors the post's lines it names, and how a hit names them as they are now."""
    error = None if result.error is None else codec.retext(result.error, change)
    return replace(result, output=codec.retext(result.output, change), error=error)


def _replayed(stored: SnippetResult, snippet: Snippet, snippets: Sequence[Snippet],
              env: str) -> SnippetResult:
    """A stored result as a hit: the session's snippet as it is now, its lines named anew."""
    if stored.status == "failed" or stored.not_run_after is not None:
        raise ValueError("a failed result, or one not run after a failure, is never stored")
    result = _retold(stored, lambda text: unanchored(text, snippets))
    return replace(result, snippet=snippet, env=env, cached=True)
