"""Files on disk, safely: a write is atomic (a reader, or a crash, sees the old file or the new
one, never part), and a read (`read_regular`) never waits on a FIFO or device, nor reads more
than a limit. A tree a kernel could have made is removed without recursion, without following
a link and without leaving its file system (`remove_tree`).

The temp file is named `.{name}.runner-{pid}-XXXXXXXX.tmp` after the process writing it, so that
one left behind by a writer that died (SIGKILL, power cut) can be told from one being written
now, and removed by a later run (`remove_stale_temps`)."""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
import time
from pathlib import Path

STALE_TEMP = re.compile(r"\A\..+\.runner-(\d+)-[a-z0-9_]+\.tmp\Z")
MAX_SCAN = 10_000  # folder entries looked at by one sweep, so a huge folder costs little
MIN_AGE_S = 60.0  # a temp file younger than this is left alone, whatever its pid says


def write_atomic(path: Path, data: bytes, durable: bool = True) -> None:
    """Temp file in the same folder, fsync, rename: a crash leaves the old file or the new one,
    never part of either. An existing file keeps its mode. Not `durable` (a cache entry, which
    is checked when read): no fsync, so a power cut may leave an empty or torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.runner-{os.getpid()}-",
                                    suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            if durable:
                os.fsync(out.fileno())
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


class NotAFile(ValueError):
    """Something other than a regular file stands where one is read: `kind` says what."""

    def __init__(self, kind: str) -> None:
        super().__init__(f"{kind}, not a regular file")
        self.kind = kind


class TooLarge(ValueError):
    """A file of `size` bytes or more, over the limit of a read."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"{size} bytes or more, over the {limit} a read allows")
        self.size = size


KINDS = {stat.S_IFDIR: "a folder", stat.S_IFIFO: "a FIFO", stat.S_IFLNK: "a symlink",
         stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
         stat.S_IFSOCK: "a socket"}


def read_regular(path: Path | str, limit: int, *, follow_symlinks: bool = True,
                 dir_fd: int | None = None) -> bytes:
    """The bytes of a regular file of `limit` bytes at most, read without ever waiting: the type
    is checked before the open (a FIFO or a device is never opened) and again on what was opened
    (O_NONBLOCK: a FIFO swapped in between cannot block the open), and at most `limit` + 1
    bytes are read, so a file that grows meanwhile is refused too. Without `follow_symlinks`
    a symlink is refused. `dir_fd`: `path` is a name in that open folder. Raises NotAFile,
    TooLarge or OSError."""
    _check_regular(os.stat(path, dir_fd=dir_fd, follow_symlinks=follow_symlinks).st_mode)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    handle = os.open(path, flags if follow_symlinks else flags | os.O_NOFOLLOW, dir_fd=dir_fd)
    try:
        info = os.fstat(handle)
        _check_regular(info.st_mode)
        if info.st_size > limit:
            raise TooLarge(info.st_size, limit)
        chunks: list[bytes] = []
        left = limit + 1
        while left > 0 and (chunk := os.read(handle, min(left, 2**20))):
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(handle)
    data = b"".join(chunks)
    if len(data) > limit:
        raise TooLarge(len(data), limit)
    return data


def _check_regular(mode: int) -> None:
    if not stat.S_ISREG(mode):
        raise NotAFile(KINDS.get(stat.S_IFMT(mode), "not a file"))


def write_new(name: str, data: bytes, mode: int, dir_fd: int) -> None:
    """`data` as a new file `name` in the open folder `dir_fd`, never through whatever already
    stands there: O_EXCL (an existing file is refused), O_NOFOLLOW (so is a link, even one
    that leads nowhere). FileExistsError or OSError."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    handle = os.open(name, flags, mode, dir_fd=dir_fd)
    with os.fdopen(handle, "wb") as out:
        os.fchmod(handle, mode)  # as given, whatever the umask
        out.write(data)


_FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def remove_tree(path: Path) -> None:
    """Remove `path` and, if it is a folder, everything under it, as `rm -rf --one-file-system`
    does; made for a tree a kernel may have shaped to hurt (it never raises, however deep or
    odd the tree: what cannot be removed stays):

    - no recursion: one folder open at a time and a stack of the folders above it, which are
      returned to by `..`, checked against the device and inode first seen (a folder moved
      meanwhile ends the removal); so neither Python's recursion limit nor the open file limit
      bounds the depth;
    - names only, each relative to its open folder, so no path is ever longer than one name
      (PATH_MAX does not apply);
    - a link is removed, never followed (O_NOFOLLOW), so nothing outside the tree goes;
    - a folder on another device (a mount point) is not entered;
    - a folder of mode 000 (or without write or search permission) is given 0o700 first: the
      tree is the runner's own."""
    with contextlib.suppress(OSError):
        parent = os.open(path.parent, _FOLDER & ~os.O_NOFOLLOW)  # the caller's own folder
        try:
            _remove_below(parent, path.name)
        finally:
            os.close(parent)


def _remove_below(parent: int, name: str) -> None:
    entered = _enter(parent, name, None)
    if entered is None:
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=parent)  # not a folder (a file, a link to one): itself only
        return
    current, info = entered
    device = info.st_dev
    # each folder entered, from the top down: its name, its stat, its subfolders not yet gone
    stack = [(name, info, _clear(current))]
    try:
        while True:
            pending = stack[-1][2]
            if pending:
                below = pending.pop()
                entered = _enter(current, below, device)
                if entered is not None:
                    os.close(current)
                    current, info = entered
                    stack.append((below, info, _clear(current)))
                continue
            done = stack.pop()[0]
            if not stack:
                break
            above = _up(current, stack[-1][1])
            if above is None:
                return
            os.close(current)
            current = above
            with contextlib.suppress(OSError):
                os.rmdir(done, dir_fd=current)
    finally:
        os.close(current)
    with contextlib.suppress(OSError):
        os.rmdir(name, dir_fd=parent)


def _enter(parent: int, name: str, device: int | None) -> tuple[int, os.stat_result] | None:
    """The folder `name` of the open folder `parent`, opened, with its stat; None where it is
    anything else (a link, a file, gone) or on another device than `device`."""
    try:
        folder = os.open(name, _FOLDER, dir_fd=parent)
    except PermissionError:  # mode 000, to an owner other than root
        if not _unlock(parent, name, device):
            return None
        try:
            folder = os.open(name, _FOLDER, dir_fd=parent)
        except OSError:
            return None
    except OSError:
        return None
    info = os.fstat(folder)
    if device is not None and info.st_dev != device:
        os.close(folder)
        return None
    if info.st_mode & 0o700 != 0o700:  # its entries could not be removed, nor its folders read
        with contextlib.suppress(OSError):
            os.fchmod(folder, 0o700)
    return folder, info


def _unlock(parent: int, name: str, device: int | None) -> bool:
    """Give the folder `name` (not a link: O_NOFOLLOW; on `device`) mode 0o700, through an
    O_PATH fd, which needs no permission to open: fchmod cannot take one, its /proc link can."""
    flags = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    with contextlib.suppress(OSError):
        handle = os.open(name, flags, dir_fd=parent)
        try:
            if device is None or os.fstat(handle).st_dev == device:
                os.chmod(f"/proc/self/fd/{handle}", 0o700)
                return True
        finally:
            os.close(handle)
    return False


def _clear(folder: int) -> list[str]:
    """Unlink what the open folder holds but its folders (a link: the link itself); the names
    of its folders."""
    try:
        with os.scandir(folder) as listing:
            entries = list(listing)
    except OSError:
        return []
    folders = []
    for entry in entries:
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                folders.append(entry.name)
            else:
                os.unlink(entry.name, dir_fd=folder)
    return folders


def _up(folder: int, expected: os.stat_result) -> int | None:
    """The folder above the open `folder` (by `..`), opened, while it is still the folder it
    was entered from (`expected`: same device and inode); else None."""
    try:
        above = os.open("..", _FOLDER, dir_fd=folder)
    except OSError:
        return None
    info = os.fstat(above)
    if (info.st_dev, info.st_ino) != (expected.st_dev, expected.st_ino):
        os.close(above)
        return None
    return above


def remove_stale_temps(folder: Path) -> list[Path]:
    """Remove the temp files `write_atomic` left in `folder` when its writer died: those whose
    pid is no longer alive and that are over `MIN_AGE_S` old (a pid from another pid namespace,
    a container sharing the folder, looks dead here; its write takes milliseconds, not a
    minute). Looks at `MAX_SCAN` entries at most; never raises. Returns what it removed."""
    removed: list[Path] = []
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for count, entry in enumerate(entries):
            if count >= MAX_SCAN:
                break
            match = STALE_TEMP.match(entry.name)
            if match and _stale(entry, int(match.group(1))):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


def _stale(entry: os.DirEntry[str], pid: int) -> bool:
    try:
        info = entry.stat(follow_symlinks=False)
    except OSError:
        return False
    if not stat.S_ISREG(info.st_mode) or time.time() - info.st_mtime < MIN_AGE_S:
        return False
    return not alive(pid)


def alive(pid: int) -> bool:
    """Whether a process with this pid exists (one of another user's counts as alive)."""
    if pid <= 0:  # 0 and -1 would ask about a whole process group
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return True


# --- what a file was when it was read ------------------------------------------------------

Signature = list[int] | None  # a file's stat: device, inode, size, mtime, ctime (None: absent)
RACY_NS = 2 * 10**9  # a file changed more recently than this is not vouched for


def signature(path: Path | str, dir_fd: int | None = None) -> Signature:
    """The file's stat as it is now (its own, never a link's target); None where absent."""
    try:
        info = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return None
    return [info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns]


def seen(path: Path | str, dir_fd: int | None = None, renamed: bool = False) -> Signature:
    """The file's `signature` as a reader sees it right before it reads it, to vouch later that
    nothing changed since; None where it is absent, or changed within RACY_NS (as git's racily
    clean files: where timestamps are coarse, a second write in the same tick keeps the same
    stat). `renamed`: a file only ever replaced whole by a rename (a cache entry), whose new
    inode tells any change however coarse the clock."""
    sig = signature(path, dir_fd)
    if sig is not None and not renamed and time.time_ns() - max(sig[3], sig[4]) < RACY_NS:
        return None
    return sig
