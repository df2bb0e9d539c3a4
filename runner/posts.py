"""Posts on disk: find them, read them, and replace one atomically. The only writer of posts/.

Figures are written only into real folders inside the post's folder (or `[tool.runner]
figures`): the folder is opened one component at a time without following a link, and every
figure is read, written and removed relative to it; a symlinked folder or figure is a
PostError, so no write (nor removal) ever lands outside."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import fnmatch
import os
import secrets
import stat
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath

from runner.atomic import NotAFile, TooLarge, read_regular, remove_stale_temps, write_atomic
from runner.config import Figures
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
class FigureFolder:
    """Where a post's figures live: `sub`, real folders (never a symlink) inside `base`, the
    post's folder or `[tool.runner] figures`' (`writeback.figure_folder`)."""

    base: Path
    sub: PurePath

    @classmethod
    def of(cls, post: Path, place: Figures | None) -> FigureFolder:
        folder = PurePath(figure_folder(str(post), place))
        if place is not None and folder.is_absolute():
            return cls(place.folder, folder.relative_to(place.folder))
        return cls(post.parent, folder)

    @property
    def path(self) -> Path:
        return self.base / self.sub


@dataclass(frozen=True)
class Fresh:
    """A post as a fresh run renders it, against what is on disk."""

    text: str
    pictures: dict[Path, bytes]  # every figure the post links, as drawn now
    redrawn: dict[Path, str]  # figures missing on disk or changed by their pixels: how
    orphans: tuple[Path, ...]  # figure files beside the post that no snippet draws any more
    folder: FigureFolder | None = None  # where they all are

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
    """What `verify` compares and `update` writes: text, stamp, figures (pixels, not bytes). A
    figure folder (or figure) that is a symlink is a PostError: the runner does not follow it."""
    text = stamp(render(post, outputs, options), verified_by)
    folder = FigureFolder.of(path, options.figures)
    drawn = {PurePath(rel).name: png
             for rel, png in figures(post, outputs, options.figures).items()}
    with _opened(path, folder) as handle:
        on_disk = _figure_files(path, folder, handle)
        redrawn = {folder.path / name: why for name, png in drawn.items()
                   if (why := _stale_figure(handle, name, on_disk, png))}
    pictures = {folder.path / name: png for name, png in drawn.items()}
    orphans = tuple(folder.path / name for name in sorted(on_disk) if name not in drawn)
    return Fresh(text, pictures, redrawn, orphans, folder)


def _stale_figure(folder: int | None, name: str, on_disk: set[str], png: bytes) -> str | None:
    """What differs between the figure on disk and the one drawn now (None: the same)."""
    old = _read_at(folder, name) if folder is not None and name in on_disk else None
    return "missing" if old is None else difference(old, png)


def write_fresh(path: Path, old: str, fresh: Fresh) -> None:
    """The post (refused if it changed meanwhile: then no figure is touched), then its
    figures: each by one rename in their folder, opened again without following links."""
    if fresh.text != old:
        replace(path, old, fresh.text)
    if not (fresh.redrawn or fresh.orphans) or fresh.folder is None:
        return
    with _opened(path, fresh.folder, create=True) as handle:
        assert handle is not None
        sweep(fresh.folder.path)
        for picture in fresh.redrawn:
            _write_at(handle, picture.name, fresh.pictures[picture])
        regular = _figure_files(path, fresh.folder, handle)
        for orphan in fresh.orphans:
            if orphan.name in regular:  # a regular file: never a link, nor a folder
                os.unlink(orphan.name, dir_fd=handle)


@contextlib.contextmanager
def _opened(post: Path, folder: FigureFolder, create: bool = False) -> Iterator[int | None]:
    """The figure folder, opened from its base one component at a time, none followed if it
    is a link (O_NOFOLLOW); made where missing with `create`, else None. A component that is
    a symlink or not a folder is a PostError naming the post."""
    handle: int | None = os.open(folder.base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for depth in range(1, len(folder.sub.parts) + 1):
            assert handle is not None
            inner = _open_folder(post, folder, handle, depth, create)
            os.close(handle)
            handle = inner
            if handle is None:
                break
        yield handle
    finally:
        if handle is not None:
            os.close(handle)


_FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_folder(post: Path, folder: FigureFolder, parent: int, depth: int,
                 create: bool) -> int | None:
    """The figure folder's component at `depth`, in `parent`, opened without following a
    link (made first with `create`); None when it is missing."""
    name = folder.sub.parts[depth - 1]
    where = folder.base.joinpath(*folder.sub.parts[:depth])
    if name in (".", "..", os.sep):
        raise PostError(f"figure folder {folder.path} is not inside {folder.base}", post)
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, dir_fd=parent)
    try:
        return os.open(name, _FOLDER, dir_fd=parent)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        link = stat.S_ISLNK(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode)
        raise PostError(f"figure folder {where} is {'a symlink' if link else 'not a folder'}: "
                        "figures are written only into real folders, never through a link",
                        post) from None


def _figure_files(post: Path, folder: FigureFolder, handle: int | None) -> set[str]:
    """The names of the regular figure files in the opened folder; a figure that is a symlink
    is a PostError (it would be read, replaced or removed through)."""
    if handle is None:
        return set()
    found = set()
    with os.scandir(handle) as entries:
        for entry in entries:
            if not fnmatch.fnmatchcase(entry.name, FIGURE_GLOB):
                continue
            if entry.is_symlink():
                raise PostError(f"figure {folder.path / entry.name} is a symlink: figures are "
                                "only regular files, never read or written through a link",
                                post)
            if entry.is_file(follow_symlinks=False):
                found.add(entry.name)
    return found


def _read_at(folder: int, name: str) -> bytes | None:
    """A figure's bytes, read in its opened folder, or None where there is no regular file of
    FIGURE_MAX_BYTES at most (never through a link, never a wait on a FIFO)."""
    try:
        handle = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=folder)
    except OSError:
        return None
    with os.fdopen(handle, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > FIGURE_MAX_BYTES:
            return None
        data = file.read(FIGURE_MAX_BYTES + 1)
    return data if len(data) <= FIGURE_MAX_BYTES else None


def _write_at(folder: int, name: str, data: bytes) -> None:
    """`data` as the file `name` in the opened folder, as `atomic.write_atomic` writes (a temp
    file named after its writer beside it, fsync, one rename; an existing file's mode kept),
    every step relative to the folder: a rename replaces a link, never writes through one."""
    try:
        mode = os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o644
    temp = f".{name}.runner-{os.getpid()}-{secrets.token_hex(4)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    handle = os.open(temp, flags, 0o600, dir_fd=folder)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
            os.fchmod(out.fileno(), mode)
        os.replace(temp, name, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=folder)
        raise
