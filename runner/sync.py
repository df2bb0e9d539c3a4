"""An author's notebook -> the post: code edited in a snippets/ notebook (or its py:percent
twin) goes back into exactly the fence it came from, as jupytext pairing does.

Only code moves: prose is the post's and is never taken from a notebook. Each code cell carries
the hash of the code it was made from; a cell whose code changed while the post's snippet also
changed since is a conflict and is refused. Pure: `sync(post, cells)` returns the new text.
`sync_notebooks` is the I/O around it: a notebook and its twin are one pair (code edited in
either is synced), the post is found from the project root whatever the current folder, and
after a sync both files of the pair are written again with each synced cell's new hash.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from runner import posts
from runner.errors import PostError, RunnerError, UsageError
from runner.markdown import newline, parse, split_lines
from runner.model import Post, Snippet
from runner.notebooks import code_hash, post_file, write_author_notebook

NOTHING_TO_SYNC = "nothing to sync: the notebooks match their posts"


def sync_notebooks(paths: Sequence[str]) -> list[str | RunnerError]:
    """`sync`: the code cells of these notebooks (or py:percent twins) back into their posts;
    `post.md:LINE` for each fence changed, and a post that cannot be synced as its error.
    A notebook that cannot be read is a UsageError (the command named a wrong file)."""
    done: list[str | RunnerError] = []
    pairs = {Path(path).with_suffix(".ipynb").absolute(): Path(path) for path in paths}
    for named in pairs.values():
        try:
            book = _paired_notebook(named)
        except PostError as exc:
            done.append(exc)
            continue
        synced, recorded = _sync_book(book, named)
        done += synced
        if recorded:  # the pair again, each synced cell with its new hash, the two alike
            book.metadata.pop("jupytext", None)
            write_author_notebook(book, named.with_suffix(".ipynb"))
    return done


def _read(path: Path) -> Any:
    import jupytext

    try:
        return jupytext.read(path)
    except Exception as exc:
        raise UsageError(f"cannot read the notebook: {exc}", path) from exc


def _paired_notebook(named: Path) -> Any:
    """The notebook named (a .py twin with the outputs of its .ipynb), with the code edited in
    the other file of the pair taken in too; a cell edited differently in both is a PostError."""
    from jupytext.combine import combine_inputs_with_outputs

    book = _read(named)
    other = named.with_suffix(".py" if named.suffix == ".ipynb" else ".ipynb")
    if not other.is_file():
        return book
    twin = _read(other)
    if other.suffix == ".ipynb":
        book = combine_inputs_with_outputs(book, twin, fmt="py:percent")
    ours = {_key(cell): cell for cell in book.cells if _key(cell)}
    for cell in twin.cells:
        mine = ours.get(_key(cell))
        if mine is None or not _edited(cell) or _code(cell) == _code(mine):
            continue
        if _edited(mine):
            raise PostError(f"this snippet was edited differently in {named.name} and "
                            f"{other.name}: not synced (keep one edit)",
                            cell.metadata.runner.post, cell.metadata.runner.get("line"))
        mine.source = cell.source
    return book


def _sync_book(book: Any, named: Path) -> tuple[list[str | RunnerError], int]:
    """Each post the notebook's code cells name, synced; the fences changed (or the post's
    error), and how many cells' recorded code and line were brought up to date."""
    done: list[str | RunnerError] = []
    recorded = 0
    by_post: dict[str, list[Any]] = {}
    for cell in book.cells:
        if _key(cell):
            by_post.setdefault(cell.metadata.runner.post, []).append(cell)
    for name, cells in by_post.items():
        path = post_file(name, named)
        shown = str(posts.relative(path))
        try:
            post = parse(shown, posts.read(path))
            text, changed = sync(post, cells, name)
            if changed:
                posts.replace(path, post.text, text)
        except PostError as exc:
            done.append(exc)
            continue
        done += [f"{shown}:{line}" for line in changed]
        recorded += record(parse(shown, text), cells)
    return done, recorded


def sync(post: Post, cells: Iterable[Any], name: str | None = None) -> tuple[str, list[int]]:
    """The post with each edited cell's code in its fence, and the fence lines changed. The
    cells that name this post (`name`, as its notebook does; default `post.path`) count."""
    lines = split_lines(post.text)
    line_end = newline(lines)
    edits: list[tuple[Any, str]] = []
    for cell in cells:
        meta = cell.get("metadata", {}).get("runner")
        if _key(cell) is None or meta.get("post") != (name or post.path):
            continue
        code = _code(cell)
        if code_hash(code) == meta["code"]:
            continue  # not edited in the notebook
        snippet = _snippet(post, meta)
        if snippet is None:
            raise PostError(f"the notebook's snippet {meta.get('snippet')} is not in the post "
                            "any more (write the notebooks again)", post.path, meta.get("line"))
        if code_hash(snippet.code) == code_hash(code):
            continue  # already the post's code (synced before)
        if code_hash(snippet.code) != meta["code"]:
            raise PostError("this snippet changed in the post and in the notebook: not synced "
                            "(merge by hand, then write the notebooks again)", post.path,
                            snippet.line)
        if any(line.strip().startswith(("```", "~~~")) for line in code.split("\n")):
            raise PostError("the notebook's code has a fence line (``` or ~~~), which would end "
                            "the post's fence: not synced", post.path, snippet.line)
        edits.append((snippet, code))
    for snippet, code in sorted(edits, key=lambda edit: edit[0].line, reverse=True):
        first = snippet.line  # the 0-based index of the first code line; later lines first
        count = snippet.code.count("\n")
        prefix = snippet.prefix
        lines[first:first + count] = [prefix + line + line_end if line else
                                      prefix.rstrip() + line_end
                                      for line in code.rstrip("\n").split("\n")]
    return "".join(lines), sorted(snippet.line for snippet, _ in edits)


def record(post: Post, cells: Iterable[Any]) -> int:
    """Each cell whose code is its snippet's code now remembers that code's hash and the
    fence's line (so a second edit syncs too); how many cells changed."""
    count = 0
    for cell in cells:
        meta = cell.metadata.runner
        snippet = _snippet(post, meta)
        if snippet is None or code_hash(snippet.code) != code_hash(_code(cell)):
            continue
        fresh = {"code": code_hash(snippet.code), "line": snippet.line}
        if any(meta.get(key) != value for key, value in fresh.items()):
            meta.update(fresh)
            count += 1
    return count


def _key(cell: Any) -> tuple[str, int] | None:
    """The post and snippet number an author cell was made from (None for any other cell)."""
    meta = cell.get("metadata", {}).get("runner")
    if cell.get("cell_type") != "code" or not meta or not meta.get("post"):
        return None
    return str(meta["post"]), int(meta.get("snippet", 0))


def _code(cell: Any) -> str:
    return cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])


def _edited(cell: Any) -> bool:
    return bool(code_hash(_code(cell)) != cell["metadata"]["runner"].get("code"))


def _snippet(post: Post, meta: Any) -> Snippet | None:
    number = int(meta.get("snippet", 0))
    return post.snippets[number - 1] if 1 <= number <= len(post.snippets) else None
