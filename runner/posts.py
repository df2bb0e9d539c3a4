"""Posts on disk: find them, read them, and replace one atomically. The only writer of posts/."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from runner.atomic import NotAFile, TooLarge, read_regular, remove_stale_temps, write_atomic
from runner.errors import PostError, UsageError
from runner.images import difference
from runner.markdown import POST_SUFFIXES
from runner.model import Output, Post
from runner.writeback import (
    FIGURE_GLOB,
    RenderOptions,
    figure_folder,
    figures,
    render,
    stamp,
)

MAX_BYTES = 5 * 2**20  # a post larger than this is refused, not parsed
FIGURE_MAX_BYTES = 64 * 2**20  # a figure file larger than this is drawn again
LOCK_SECONDS = 60.0  # waiting longer for another run's lock on a post: not written
SWEEP_EVERY_S = 60.0  # a folder's stale temp files are looked for this often at most
_swept: dict[str, float] = {}  # folder -> when its stale temp files were last removed


def find(paths: Iterable[Path]) -> list[Path]:
    """Post files named, and the posts under folders named, in a stable order."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            # Anything named like a post is one: a folder or a symlink loop so named is then
            # reported as a broken post, not passed over in silence.
            found += sorted(p for p in path.rglob("*") if p.suffix in POST_SUFFIXES)
        elif os.path.lexists(path):
            found.append(path)
        else:
            raise UsageError(f"no such post or folder: {path}")
    return list(dict.fromkeys(found))


def relative(path: Path) -> Path:
    """The path relative to the current folder when it lies inside it (as a user names it)."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def read(path: Path) -> str:
    """The post's text, exactly (BOM and line endings kept); UTF-8 or a PostError. Only a
    regular file (or a symlink to one) is a post: a FIFO, a device or a folder so named is a
    PostError at once, never a wait; at most MAX_BYTES are read, even of a file that grows."""
    return _read(path, path)


def _read(path: Path, shown: Path) -> str:
    """`path`'s text; errors name `shown` (the post as the user named it)."""
    data = _read_bounded(path, shown)
    if not data.strip():
        raise PostError("is empty", shown, 1)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise PostError(f"not UTF-8: byte 0x{data[exc.start]:02x} cannot be decoded",
                        shown, line) from exc


def _read_bounded(path: Path, shown: Path) -> bytes:
    """At most MAX_BYTES of a regular file (`atomic.read_regular`): never a wait on a FIFO or
    device, never more than the limit of a file that grows while read."""
    try:
        return read_regular(path, MAX_BYTES)
    except NotAFile as exc:
        if exc.kind == "a folder":
            raise PostError("is a folder, not a post", shown) from exc
        raise PostError(f"is {exc.kind}, not a regular file: not read", shown) from exc
    except TooLarge as exc:
        raise PostError(f"is {exc.size / 2**20:.1f} MB or more, over the "
                        f"{MAX_BYTES // 2**20} MB a post may be", shown) from exc
    except OSError as exc:
        raise PostError(f"cannot read: {exc.strerror or exc}", shown) from exc


def sweep(folder: Path) -> None:
    """Remove the temp files that writers which died left in a post's folder (see
    `atomic.remove_stale_temps`): one listdir per folder and SWEEP_EVERY_S at most."""
    key = os.path.abspath(folder)
    now = time.monotonic()
    last = _swept.get(key)
    if last is None or now - last >= SWEEP_EVERY_S:
        _swept[key] = now
        remove_stale_temps(folder)


def replace(path: Path, old: str, new: str) -> None:
    """Write `new` over the post in one rename, unless the post changed since it was read.

    A post that is a symlink is written through it: the link's target gets the new text and
    the link stays a link (a post kept elsewhere and linked into posts/ is updated where it
    lives). Compare and rename happen under a lock on the target's folder, so of two runs at
    once (two terminals, CI and a hook) each writes what it read over, or nothing; a lock
    held elsewhere for over LOCK_SECONDS is a PostError and nothing is written."""
    if len(new.encode("utf-8")) > MAX_BYTES:  # never write what a later read would refuse
        raise PostError(f"would be {len(new.encode('utf-8')) / 2**20:.1f} MB with its output, "
                        f"over the {MAX_BYTES // 2**20} MB a post may be: not written", path)
    target = Path(os.path.realpath(path))
    sweep(target.parent)  # only where the run writes: verify changes nothing under posts/
    with _folder_locked(target.parent, path):
        current = _read(target, path)
        if current == new:
            return  # another run wrote the same
        if current != old:
            raise PostError("changed on disk while the runner ran: not written", path)
        write_atomic(target, new.encode("utf-8"))


@contextlib.contextmanager
def _folder_locked(folder: Path, post: Path) -> Iterator[None]:
    """An exclusive flock on the post's folder, opened read-only.

    Why the folder and not a lock file: a lock file is either left behind (one per post ever
    run, as /tmp/runner-post-*.lock once were) or removed after use, and removing races: a run
    that opened the file just before it was unlinked locks the orphaned inode while the next
    run creates and locks a new file, and both write. The folder exists as long as its post
    does, nothing is created, and the kernel drops a flock when its holder exits however it
    exits, so the lock never goes stale. It covers every post in the folder, for the
    milliseconds of one compare and rename. Where a filesystem refuses flock on a folder (some
    network filesystems), the post is written unlocked: the compare just before the rename
    still refuses a post changed since it was read."""
    handle = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _lock(handle, post)
        yield
    finally:
        os.close(handle)  # drops the lock


def _lock(handle: int, post: Path) -> None:
    deadline = time.monotonic() + LOCK_SECONDS
    pause = 0.01
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise PostError(f"another run holds this post's lock for over "
                                f"{LOCK_SECONDS:g} s: not written", post) from None
            time.sleep(pause)
            pause = min(pause * 2, 0.25)
        except OSError:
            return  # no flock here: see _folder_locked


def read_bytes(path: Path) -> bytes | None:
    """A figure's bytes, or None where there is no regular file of FIGURE_MAX_BYTES at most
    (a FIFO so named is not waited on: the figure is drawn again)."""
    try:
        return read_regular(path, FIGURE_MAX_BYTES)
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class Fresh:
    """A post as a fresh run renders it, against what is on disk."""

    text: str
    pictures: dict[Path, bytes]  # every figure the post links, as drawn now
    redrawn: dict[Path, str]  # figures missing on disk or changed by their pixels: how
    orphans: tuple[Path, ...]  # figure files beside the post that no snippet draws any more

    def differs(self, old: str) -> bool:
        return self.text != old or bool(self.redrawn or self.orphans)

    def notes(self) -> str:
        """One line per stale figure, saying what differs: "figure posts/x/snippet-1-figure-1.png:
        size 640x480 -> 800x600" (or "missing", "12.5 % of pixels differ by more than 16/255",
        "no longer drawn")."""
        return "".join(f"figure {p}: {why}\n" for p, why in self.redrawn.items()) + "".join(
            f"figure {p}: no longer drawn\n" for p in self.orphans)


def freshen(path: Path, post: Post, outputs: Mapping[int, Output], verified_by: str,
            options: RenderOptions) -> Fresh:
    """What `verify` compares and `update` writes: text, stamp, figures (pixels, not bytes)."""
    text = stamp(render(post, outputs, options), verified_by)
    folder = path.parent
    pictures = {folder / rel: png for rel, png in figures(post, outputs, options.figures).items()}
    redrawn = {p: why for p, png in pictures.items() if (why := _stale_figure(p, png))}
    own = folder / figure_folder(str(path), options.figures)  # absolute under [tool.runner] figures
    orphans = tuple(p for p in sorted(own.glob(FIGURE_GLOB)) if p not in pictures)
    return Fresh(text, pictures, redrawn, orphans)


def _stale_figure(path: Path, png: bytes) -> str | None:
    """What differs between the figure on disk and the one drawn now (None: the same)."""
    old = read_bytes(path)
    return "missing" if old is None else difference(old, png)


def write_fresh(path: Path, old: str, fresh: Fresh) -> None:
    """The post (refused if it changed meanwhile: then no figure is touched), then its
    figures: each by one rename."""
    if fresh.text != old:
        replace(path, old, fresh.text)
    for picture in fresh.redrawn:
        sweep(picture.parent)
        write_atomic(picture, fresh.pictures[picture])
    for orphan in fresh.orphans:
        orphan.unlink()
