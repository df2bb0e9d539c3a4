"""An author's notebook -> the post: code edited in a snippets/ notebook (or its py:percent
twin) goes back into exactly the fence it came from, as jupytext pairing does.

Only code moves: prose is the post's and is never taken from a notebook. Each code cell carries
the hash of the code it was made from; a cell whose code changed while the post's snippet also
changed since is a conflict and is refused. Pure: `sync(post, cells)` returns the new text.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from runner import posts
from runner.errors import PostError, RunnerError, UsageError
from runner.markdown import newline, parse, split_lines
from runner.model import Post
from runner.notebooks import code_hash


def sync_notebooks(paths: Sequence[str]) -> list[str | RunnerError]:
    """`sync`: the code cells of these notebooks (or py:percent twins) back into their posts;
    `post.md:LINE` for each fence changed, and a post that cannot be synced as its error.
    A notebook that cannot be read is a UsageError (the command named a wrong file)."""
    import jupytext

    by_post: dict[str, list[Any]] = {}
    for path in paths:
        try:
            book = jupytext.read(path)
        except Exception as exc:
            raise UsageError(f"cannot read the notebook: {exc}", path) from exc
        for cell in book.cells:
            post = cell.get("metadata", {}).get("runner", {}).get("post")
            if cell.cell_type == "code" and post:
                by_post.setdefault(post, []).append(cell)
    done: list[str | RunnerError] = []
    for post_path, cells in by_post.items():
        try:
            post = parse(post_path, posts.read(Path(post_path)))
            text, changed = sync(post, cells)
            if changed:
                posts.replace(Path(post_path), post.text, text)
        except PostError as exc:
            done.append(exc)
            continue
        done += [f"{post_path}:{line}" for line in changed]
    return done


def sync(post: Post, cells: Iterable[Any]) -> tuple[str, list[int]]:
    """The post with each edited cell's code in its fence, and the fence lines changed."""
    lines = split_lines(post.text)
    line_end = newline(lines)
    edits: list[tuple[Any, str]] = []
    for cell in cells:
        meta = cell.get("metadata", {}).get("runner")
        if cell.get("cell_type") != "code" or not meta or meta.get("post") != post.path:
            continue
        code = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
        if code_hash(code) == meta["code"]:
            continue  # not edited in the notebook
        number = int(meta["snippet"])
        if not 1 <= number <= len(post.snippets):
            raise PostError(f"the notebook's snippet {number} is not in the post any more "
                            "(write the notebooks again)", post.path, meta.get("line"))
        snippet = post.snippets[number - 1]
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
