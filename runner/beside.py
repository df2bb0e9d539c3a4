"""The files beside a post: what its snippets find where the post is (a CSV, a JSON).

They are listed (`files_beside`: by name and lstat alone), read and hashed once a run
(`read_beside`: a `Beside`, whose digest is part of each of the post's sessions' cache keys,
and whose per-file signatures a verdict records), and copied into each kernel's new scratch
folder (`copy_beside`: only bytes that hash as they did when the key was made).
A pull request can commit any of them, so nothing is followed, waited on or read unbounded.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from runner.atomic import KINDS, NotAFile, Signature, read_regular, seen, write_new
from runner.markdown import POST_SUFFIXES


def print_warning(text: str) -> None:
    """A warning where the caller names no other way: one line on stderr."""
    print(f"runner: {text}", file=sys.stderr, flush=True)


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
    # each file's `atomic.seen` right before its bytes were read (a verdict vouches by it)
    seen: tuple[Signature, ...] = field(default=(), compare=False)

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
    signatures = []
    total = 0
    with contextlib.suppress(OSError), _folder(folder) as handle:
        for name in names:
            try:
                sig = seen(name, dir_fd=handle)  # before the read: see atomic.seen
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
            signatures.append(sig)
    if left:
        more = f" and {len(left) - _SHOWN} more" if len(left) > _SHOWN else ""
        warn(f"{folder}: not given to its posts' snippets: {', '.join(left[:_SHOWN])}{more}")
    return Beside(folder, tuple(files), tuple(signatures))


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
