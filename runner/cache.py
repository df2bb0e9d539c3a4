"""Execution cache: a session's results, keyed by everything that decides them.

The key hashes the session's code and markers (not its line numbers: moving a snippet down the
post does not change what it prints), the environment's lock hash, every variable its kernel
gets (`kernel_inputs`), the files beside the post, the runner's version and the per-snippet
timeout. Only sessions whose every snippet passed (or was skipped on purpose) are stored, as
jupyter-cache does: a failure is always run again. Each entry is one JSON file written by an
atomic rename under a file lock, so two runs at once never see half an entry; an entry that
cannot be read back (corrupt, too large, a folder, a FIFO, a symlink) is deleted with a warning
and the session runs.

The cache only grows when a run stores, so such a run sweeps it, once a day at most (`sweep`):
an entry no run has read or written for MAX_AGE_S goes (as jupyter-cache's limit, or ccache's
cleanup), unless a kept verdict still names it. Losing one costs a rerun, never a result.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from runner import __version__
from runner.atomic import KINDS, NotAFile, read_regular, remove_tree, write_atomic, write_new
from runner.envs import env_path, kernel_variables
from runner.markdown import POST_SUFFIXES
from runner.model import EnvSpec, Output, Part, Session, Snippet, SnippetResult
from runner.portable import anchored, unanchored

FORMAT = 2  # 2: output names the post's lines by snippet (portable.anchored)
MAX_ENTRY_BYTES = 64 * 2**20  # an entry larger than this is a miss (and is removed)
LOCK_SECONDS = 10.0  # waiting longer for an entry's lock: the results are not stored
MAX_AGE_S = 30 * 86400.0  # an entry unused this long is swept away
SWEEP_EVERY_S = 86400.0  # a cache folder is swept once a day at most


def print_warning(text: str) -> None:
    """`store`'s warnings where its caller names no other way: one line on stderr."""
    print(f"runner: {text}", file=sys.stderr, flush=True)


def kernel_inputs(env: EnvSpec, passenv: Sequence[str] = ()) -> dict[str, Any]:
    """Every input of an env's kernels that decides what a session prints, apart from the
    session's own: the runner, the env's lock and limits, and the kernel's environment as the
    kernel will get it (`envs.kernel_variables`: the allowed part of this process's
    environment, `passenv`, the env's kernel-env table, the env's own bin/ on PATH). One place
    for both the cache key (`session_key`) and a verdict's `decided_by` (`run.open_verdicts`):
    change TZ, and neither replays what was made under the old one.

    Nothing is left out of the variables, though some differ from machine to machine (HOME,
    USER, the env's path, in VIRTUAL_ENV and PATH, under the machine's cache folder): an
    entry made on one machine is then a miss on another, which runs it again. The cache is
    the machine's own; a miss costs a run, never a result."""
    return {"format": FORMAT, "runner": __version__, "env": env.name, "lock": env.lock_hash,
            "limits": [env.memory_mb, env.processes],
            "variables": kernel_variables(env, env_path(env), passenv, os.environ),
            # the sandbox the kernel will be in, as far as it is known before any is made
            # (bubblewrap there, not turned off) and as whom it runs (as root: `nobody`)
            "sandbox": [shutil.which("bwrap") is not None
                        and not os.environ.get("RUNNER_NO_SANDBOX"), os.geteuid() == 0]}


def session_key(session: Session, kernel: Mapping[str, Any], timeout: float,
                beside: str = "") -> str:
    """`kernel`: its env's `kernel_inputs` (the same for each of its sessions: made once a
    run); `beside`: the `Beside.digest` of the files beside the post."""
    recipe = {
        "kernel": kernel, "beside": beside, "timeout": timeout, "network": session.network,
        "overrides": session.overrides, "keep_going": session.keep_going,
        "snippets": [[s.code, s.hidden, asdict(s.markers)] for s in session.snippets],
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


# The files beside a post that its snippets see (a CSV, a JSON) are copied into each of its
# kernels' scratch folders: a pull request can commit any of them, so each is bounded, and so is
# the whole folder's share (a folder of 100,000 files costs a listing, never a full disk).
BESIDE_MAX_BYTES = 10 * 2**20  # one file
BESIDE_MAX_TOTAL = 64 * 2**20  # all of a folder's
BESIDE_MAX_FILES = 1000  # a folder's
_SHOWN = 10  # the files left out that a warning names; then a count


@dataclass(frozen=True)
class Beside:
    """The files beside a post as they were read for its sessions' cache key: each name with
    the sha256 of its bytes and its mode (a script's exec bit decides what running it does).
    `copy_beside` gives a kernel those bytes, with that mode, and no others."""

    folder: Path
    files: tuple[tuple[str, str, int], ...] = ()  # (name, sha256, permission bits), by name

    @property
    def digest(self) -> str:
        hashed = hashlib.sha256()
        for name, sha, mode in self.files:
            hashed.update(os.fsencode(name) + b"\0" + bytes.fromhex(sha) + b"%o" % mode)
        return hashed.hexdigest()


def files_beside(folder: Path) -> list[Path]:
    """The files beside a post that its snippets see: the regular files of its folder (not
    posts, folders, hidden files; never through a link), within the bounds above. Judged by
    name and lstat alone (nothing is opened): this listing is what a verdict records."""
    return [folder / name for name in _listing(folder)[0]]


def _listing(folder: Path) -> tuple[list[str], list[str]]:
    """The names `files_beside` keeps, and what it leaves out (each name, and why)."""
    kept: list[str] = []
    left: list[str] = []
    total = more = 0
    try:
        with os.scandir(folder) as listing:
            entries = sorted((e for e in listing if not e.name.startswith(".")
                              and Path(e.name).suffix not in POST_SUFFIXES),
                             key=lambda e: e.name)
    except OSError:
        return kept, left
    for entry in entries:
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                continue  # a figure folder, a page bundle's assets: not data
            if len(kept) == BESIDE_MAX_FILES:
                more += 1
                continue
            info = entry.stat(follow_symlinks=False)
            why = _refused(info.st_mode, info.st_size, total)
            if why:
                left.append(f"{entry.name} ({why})")
            else:
                kept.append(entry.name)
                total += info.st_size
    if more:
        left.append(f"{more} more (past {BESIDE_MAX_FILES} files)")
    return kept, left


def _refused(mode: int, size: int, total: int) -> str | None:
    if not stat.S_ISREG(mode):
        return KINDS.get(stat.S_IFMT(mode), "not a file")
    if size > BESIDE_MAX_BYTES:
        return f"over {_size(BESIDE_MAX_BYTES)}"
    if total + size > BESIDE_MAX_TOTAL:
        return f"past {_size(BESIDE_MAX_TOTAL)} in all"
    return None


def _size(count: int) -> str:
    return f"{count / 2**20:g} MiB" if count >= 2**20 else f"{count} bytes"


def read_beside(folder: Path, warn: Callable[[str], None] = print_warning) -> Beside:
    """The files beside a post (`files_beside`), each opened by name in the open folder without
    following a link or waiting (`read_regular`: O_NOFOLLOW, O_NONBLOCK, checked by fstat,
    bounded), and hashed. One warning names the folder and every file left out: a link (to
    /proc/self/environ, to ../../.git/config), a FIFO, a device, a file past the bounds; none
    is data, and none is read."""
    names, left = _listing(folder)
    files = []
    total = 0
    with contextlib.suppress(OSError), _folder(folder) as handle:
        for name in names:
            try:
                data = read_regular(name, BESIDE_MAX_BYTES, follow_symlinks=False,
                                    dir_fd=handle)
                mode = os.stat(name, dir_fd=handle, follow_symlinks=False).st_mode & 0o777
            except (OSError, ValueError) as exc:
                left.append(f"{name} ({_why(exc)})")
                continue
            if total + len(data) > BESIDE_MAX_TOTAL:  # it grew since the listing
                left.append(f"{name} (past {_size(BESIDE_MAX_TOTAL)} in all)")
                continue
            total += len(data)
            files.append((name, hashlib.sha256(data).hexdigest(), mode))
    if left:
        more = f" and {len(left) - _SHOWN} more" if len(left) > _SHOWN else ""
        warn(f"{folder}: not given to its posts' snippets: {', '.join(left[:_SHOWN])}{more}")
    return Beside(folder, tuple(files))


def copy_beside(beside: Beside, scratch: Path, warn: Callable[[str], None] = print_warning) -> None:
    """Copies of the files `read_beside` read, in a kernel's new scratch folder (so a snippet
    finds them where its post is, and what it writes to them stays there). Each is read again
    the same way and copied only when its bytes are those the key was made from: a file
    changed (or swapped for a link) since is left out, with one warning, so a kernel never
    sees bytes that its cached results are not keyed by. Each copy is a new file
    (`write_new`): never written through whatever stands in scratch."""
    try:
        with _folder(beside.folder) as source, _folder(scratch) as target:
            left = [f"{name} ({why})" for name, sha, mode in beside.files
                    if (why := _copy(name, sha, mode, source, target))]
    except OSError as exc:
        left = [f"{name} ({exc.strerror})" for name, *_ in beside.files]
    if left:
        warn(f"{beside.folder}: not copied for a kernel of its posts: {', '.join(left)}")


def _copy(name: str, sha: str, mode: int, source: int, target: int) -> str | None:
    """Copy `name` from the open folder `source` to `target`, with `mode`, when its bytes hash
    to `sha`; else why not."""
    try:
        data = read_regular(name, BESIDE_MAX_BYTES, follow_symlinks=False, dir_fd=source)
        if hashlib.sha256(data).hexdigest() != sha:
            return "changed since it was read"
        write_new(name, data, mode, target)
    except (OSError, ValueError) as exc:
        return _why(exc)
    return None


@contextlib.contextmanager
def _folder(path: Path) -> Iterator[int]:
    """The folder, open (its own path followed: a post is read through a link too)."""
    handle = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield handle
    finally:
        os.close(handle)


def _why(exc: OSError | ValueError) -> str:
    if isinstance(exc, NotAFile):
        return exc.kind
    if isinstance(exc, OSError) and exc.errno == errno.ELOOP:
        return "a symlink"  # swapped in since the listing: O_NOFOLLOW refused it
    return str(exc.strerror if isinstance(exc, OSError) and exc.strerror else exc)


def load(folder: Path, key: str, session: Session,
         warn: Callable[[str], None]) -> tuple[SnippetResult, ...] | None:
    """The session's stored results, or None (a miss). An entry that is not a regular file
    (a folder, a FIFO, a symlink: none is opened or followed), is over MAX_ENTRY_BYTES, or does
    not parse is a miss with one warning, and is removed: it can neither stop, hang nor fool
    a run."""
    path = entry(folder, key)
    try:
        data = json.loads(read_regular(path, MAX_ENTRY_BYTES, follow_symlinks=False))
        if data["key"] != key or len(data["snippets"]) != len(session.snippets):
            raise ValueError("entry does not match its key")
        return tuple(_result(snippet, session.env, item, session.snippets)
                     for snippet, item in zip(session.snippets, data["snippets"], strict=True))
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
    data = json.dumps({"key": key, "snippets": [_item(r, snippets) for r in results]})
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
    return folder / key[:2] / f"{key}.json"


def _item(result: SnippetResult, snippets: Sequence[Snippet]) -> dict[str, Any]:
    output = result.output

    def text(value: str) -> str:
        return anchored(value, snippets)

    return {
        "status": result.status, "reason": result.reason, "duration_s": result.duration_s,
        "stdout": text(output.stdout), "stderr": text(output.stderr),
        "parts": [{"kind": p.kind, "text": text(p.text), "html": p.html,
                   "png": base64.b64encode(p.png).decode()} for p in output.parts],
    }


def _result(snippet: Any, env: str, item: dict[str, Any],
            snippets: Sequence[Snippet]) -> SnippetResult:
    if item["status"] not in ("passed", "skipped"):
        raise ValueError(f"status {item['status']!r} is never stored")

    def text(value: object) -> str:
        return unanchored(_text(value), snippets)

    parts = tuple(Part(part_kind(p["kind"]), text(p["text"]), _text(p["html"]),
                       base64.b64decode(_text(p["png"]), validate=True)) for p in item["parts"])
    output = Output(text(item["stdout"]), text(item["stderr"]), parts)
    reason = item["reason"] if item["reason"] is None else _text(item["reason"])
    result = SnippetResult(snippet, env, item["status"], output, reason=reason,
                           duration_s=float(item["duration_s"]))
    return replace(result, cached=True)


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{type(value).__name__} where text was stored")
    return value


def part_kind(value: object) -> Literal["text", "table", "image"]:
    """A stored part's kind, checked (an entry's or a verdict's): ValueError for any other."""
    if value not in ("text", "table", "image"):
        raise ValueError(f"part kind {value!r} is never stored")
    return value
