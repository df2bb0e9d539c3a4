"""Posts on disk: find them, read them, and replace one atomically. The only writer of posts/."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from runner.atomic import write_atomic
from runner.errors import PostError, UsageError
from runner.images import same_picture
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
    """The post's text, exactly (BOM and line endings kept); UTF-8 or a PostError."""
    try:
        if path.is_dir():
            raise PostError("is a folder, not a post", path)
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise PostError(f"is {size / 2**20:.1f} MB, more than a post may be "
                            f"({MAX_BYTES // 2**20} MB)", path)
        data = path.read_bytes()
    except OSError as exc:
        raise PostError(f"cannot read: {exc.strerror or exc}", path) from exc
    if not data.strip():
        raise PostError("is empty", path, 1)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise PostError(f"not UTF-8: byte 0x{data[exc.start]:02x} cannot be decoded",
                        path, line) from exc


def replace(path: Path, old: str, new: str) -> None:
    """Write `new` over the post in one rename, unless the post changed since it was read.
    Compare and rename happen under a lock of this post's, so of two runs at once (two
    terminals, CI and a hook) each writes what it read over, or nothing."""
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:24]
    with FileLock(Path(tempfile.gettempdir()) / f"runner-post-{key}.lock"):
        current = read(path)
        if current == new:
            return  # another run wrote the same
        if current != old:
            raise PostError("changed on disk while the runner ran: not written", path)
        write_atomic(path, new.encode("utf-8"))


def read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


@dataclass(frozen=True)
class Fresh:
    """A post as a fresh run renders it, against what is on disk."""

    text: str
    pictures: dict[Path, bytes]  # every figure the post links, as drawn now
    redrawn: tuple[Path, ...]  # figures missing on disk or changed by their pixels
    orphans: tuple[Path, ...]  # figure files beside the post that no snippet draws any more

    def differs(self, old: str) -> bool:
        return self.text != old or bool(self.redrawn or self.orphans)

    def notes(self) -> str:
        return "".join(f"figure {p}: missing or changed\n" for p in self.redrawn) + "".join(
            f"figure {p}: no longer drawn\n" for p in self.orphans)


def freshen(path: Path, post: Post, outputs: Mapping[int, Output], verified_by: str,
            options: RenderOptions) -> Fresh:
    """What `verify` compares and `update` writes: text, stamp, figures (pixels, not bytes)."""
    text = stamp(render(post, outputs, options), verified_by)
    folder = path.parent
    pictures = {folder / rel: png for rel, png in figures(post, outputs).items()}
    redrawn = tuple(p for p, png in pictures.items()
                    if (old := read_bytes(p)) is None or not same_picture(old, png))
    orphans = tuple(p for p in sorted((folder / figure_folder(str(path))).glob(FIGURE_GLOB))
                    if p not in pictures)
    return Fresh(text, pictures, redrawn, orphans)


def write_fresh(path: Path, old: str, fresh: Fresh) -> None:
    """The post (refused if it changed meanwhile: then no figure is touched), then its
    figures: each by one rename."""
    if fresh.text != old:
        replace(path, old, fresh.text)
    for picture in fresh.redrawn:
        write_atomic(picture, fresh.pictures[picture])
    for orphan in fresh.orphans:
        orphan.unlink()
