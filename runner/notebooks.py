"""Sessions -> notebooks: the one each session runs as, and the ones authors open in snippets/."""

from __future__ import annotations

import base64
import hashlib
import html
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import unquote

import jupytext
import nbformat
from markdown_it import MarkdownIt
from markdown_it.token import Token
from nbformat import NotebookNode, from_dict
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from runner import posts
from runner.config import Config, Figures, find_root
from runner.envs import kernel_name
from runner.errors import PostError, RunnerError, UsageError
from runner.markdown import body_start, parse, split_lines
from runner.markers import OUTPUT_MARKERS
from runner.model import Post, Session, Snippet
from runner.parameters import injected
from runner.plan import neutralized, plan
from runner.writeback import figure_file


def session_notebook(session: Session) -> NotebookNode:
    """One code cell per snippet that runs, in post order, with its post line in the metadata."""
    cells = [_cell(session, index) for index, snippet in enumerate(session.snippets)
             if snippet.markers.skip is None]
    return from_dict({"nbformat": nbformat.v4.nbformat,
                      "nbformat_minor": nbformat.v4.nbformat_minor,
                      "metadata": _metadata(session), "cells": cells})


def author_notebook(post: Post, session: Session, figures: Mapping[str, bytes] | None = None,
                    name: str | None = None) -> NotebookNode:
    """What an author opens: the post's prose as Markdown cells, this env's snippets as code
    cells with their last verified output (text, tables, figures: `recorded_outputs`), the
    other envs' snippets shown as code. Each code cell remembers which snippet of which post
    (`name`: the post's path from the project root, default `post.path`) it is and the code it
    was made from, so `runner sync` can bring an edit back into exactly that fence, and refuse
    when the post changed too. Pure: `figures` are the PNGs the post links (`linked_figures`)."""
    name = name or post.path
    lines = split_lines(post.text)
    cursor = body_start(lines)
    ours = {s.line for s in session.snippets}
    cells = [new_markdown_cell(
        f"*Made by the runner from `{name}` for the pinned environment `{session.env}`. "
        "Edit code here and bring it back with `python -m runner sync THIS_FILE`; edit prose "
        "in the post.*")]
    for number, snippet in enumerate(post.snippets, 1):
        prose = "".join(lines[cursor:snippet.start]).strip("\r\n")
        if prose.strip():
            cells.append(new_markdown_cell(prose.replace("\r\n", "\n")))
        if snippet.line in ours:
            cells.append(_author_cell(post, snippet, number, name, figures or {}))
        else:
            cells.append(new_markdown_cell(f"```python\n{snippet.code}```\n\n*(runs in another "
                                           "environment: see the post's other notebooks)*"))
        cursor = snippet.output.end if snippet.output else snippet.anchor
    tail = "".join(lines[cursor:]).strip("\r\n")
    if tail.strip():
        cells.append(new_markdown_cell(tail.replace("\r\n", "\n")))
    for index, cell in enumerate(cells):  # stable ids: the same post gives the same file
        cell.id = hashlib.sha256(f"{index}\0{cell.source}".encode()).hexdigest()[:12]
    metadata = _metadata(session)
    metadata["runner"] = {"post": name, "env": session.env}
    return new_notebook(cells=cells, metadata=metadata)


def code_hash(code: str) -> str:
    return hashlib.sha256(code.rstrip("\n").encode()).hexdigest()[:16]


def _author_cell(post: Post, snippet: Snippet, number: int, name: str,
                 figures: Mapping[str, bytes]) -> NotebookNode:
    metadata: dict[str, object] = {"runner": {"post": name, "line": snippet.line,
                                              "snippet": number, "code": code_hash(snippet.code)}}
    if snippet.hidden:
        metadata["tags"] = ["hidden-in-post"]
    cell = new_code_cell(source=snippet.code.rstrip("\n"), metadata=metadata)
    cell.outputs = recorded_outputs(post, snippet, figures)
    return cell


# --- the recorded output block, back as notebook outputs -------------------------------------

_MD = MarkdownIt("commonmark").enable("table")  # the block's parts as the runner wrote them
_ESCAPED = re.compile(r"\\([!-/:-@\[-`{-~])")  # a CommonMark backslash escape


def recorded_outputs(post: Post, snippet: Snippet,
                     figures: Mapping[str, bytes]) -> list[NotebookNode]:
    """What the post records as the snippet's output, as notebook outputs in the block's
    order: `runner:output` / `runner:stderr` fences as streams, a table as a `text/html`
    display (a pandas-like HTML table, with a text grid as `text/plain`), a figure link as an
    `image/png` display of that file's bytes in `figures` (keyed by the link's path from the
    post's folder; alt text only when the file is missing)."""
    outputs: list[NotebookNode] = []
    for kind, token, rows in _block_parts(post, snippet):
        if kind == "image":
            src, alt = unquote(str(token.attrGet("src") or "")), token.content or "figure"
            data = {"text/plain": alt}
            if src in figures:
                data["image/png"] = base64.b64encode(figures[src]).decode()
            outputs.append(new_output("display_data", data=data))
        elif kind == "table":
            outputs.append(new_output("display_data", data={"text/html": table_html(rows),
                                                            "text/plain": table_text(rows)}))
        elif token.content:
            outputs.append(new_output("stream", name=kind, text=token.content))
    return outputs


def linked_figures(post: Post, place: Figures | None = None) -> list[str]:
    """The figure links of the post's output blocks; only the runner's own (in the post's
    figure folder: `figure_file` says which file), so a post cannot pull in any other file."""
    found = [unquote(str(token.attrGet("src") or "")) for snippet in post.snippets
             for kind, token, _ in _block_parts(post, snippet) if kind == "image"]
    return [link for link in found if figure_file(post.path, link, place) is not None]


def _block_parts(post: Post, snippet: Snippet) -> Iterator[tuple[str, Token, list[list[str]]]]:
    """The recorded block's parts in order: ("stdout" | "stderr", fence token, []),
    ("table", table token, cell texts by row) and ("image", image token, [])."""
    if snippet.output is None:
        return
    lines = split_lines(post.text)[snippet.output.start:snippet.output.end]
    prefix = snippet.prefix
    body = "".join(line[len(prefix):] if line.startswith(prefix) else "\n"
                   for line in lines)  # out of its container (a blank line there: `>`)
    tokens = _MD.parse(body)
    for index, token in enumerate(tokens):
        words = token.info.split() if token.type == "fence" else []
        marker = next((OUTPUT_MARKERS[w] for w in words if w in OUTPUT_MARKERS), None)
        if marker:
            yield marker, token, []
        elif token.type == "table_open":
            yield "table", token, _table_rows(tokens[index:])
        elif token.type == "inline" and tokens[index - 1].type == "paragraph_open":
            for child in token.children or []:
                if child.type == "image":
                    yield "image", child, []


def _table_rows(tokens: list[Token]) -> list[list[str]]:
    """The cells of the table the tokens open, as the text the runner wrote in them
    (`writeback.table_cell` undone: backslash escapes and `&lt;` `&gt;` `&amp;`)."""
    rows: list[list[str]] = []
    for token in tokens:
        if token.type == "table_close":
            break
        if token.type == "tr_open":
            rows.append([])
        elif token.type == "inline":
            text = _ESCAPED.sub(r"\1", token.content)
            rows[-1].append(text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&"))
    return rows


def table_html(rows: list[list[str]]) -> str:
    """A recorded table as pandas writes a DataFrame's HTML: the header row, then each row
    with its first cell (the index) as a header cell."""
    def cells(row: list[str], first: str, rest: str) -> str:
        return "".join(f"      <{tag}>{html.escape(cell, quote=False)}</{tag}>\n"
                       for tag, cell in zip([first] + [rest] * len(row), row, strict=False))

    head, *body = rows or [[]]
    return ('<div>\n<table border="1" class="dataframe">\n  <thead>\n'
            f'    <tr style="text-align: right;">\n{cells(head, "th", "th")}    </tr>\n'
            "  </thead>\n  <tbody>\n"
            + "".join(f"    <tr>\n{cells(row, 'th', 'td')}    </tr>\n" for row in body)
            + "  </tbody>\n</table>\n</div>")


def table_text(rows: list[list[str]]) -> str:
    """A recorded table as a text grid like a DataFrame's repr: the index column to the
    left, the others right-aligned, two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))] if rows else []
    return "\n".join("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
                      .rstrip() for row in rows)


def write_for_posts(paths: list[str], config: Config, out: Path) -> list[Path | RunnerError]:
    """`notebooks`: each post's sessions as author notebooks (and their py:percent twins) in
    `out`; the files written, and a post that cannot be read or planned as its error."""
    done: list[Path | RunnerError] = []
    for path in posts.find([Path(p) for p in paths] or [posts.relative(config.posts)]):
        try:
            post = parse(str(path), posts.read(path))
            sessions = plan(post, config.envs, config.import_names)
        except PostError as exc:
            done.append(exc)
            continue
        figures = {link: data for link in linked_figures(post, config.figures)
                   if (file := figure_file(post.path, link, config.figures))
                   and (data := posts.read_bytes(path.parent / file)) is not None}
        for session in sessions:
            book = author_notebook(post, session, figures, post_name(path, config.root))
            done += write_author_notebook(book, out / author_notebook_name(session))
    return done


def post_name(path: Path, root: Path) -> str:
    """How a notebook names its post: the path from the project root (`posts/x.md`), so that
    `sync` finds the post from any folder; an absolute path for a post outside the project."""
    for candidate in (path.absolute(), path.resolve()):
        if candidate.is_relative_to(root):
            return candidate.relative_to(root).as_posix()
    return str(path.absolute())


def post_file(name: str, notebook: Path) -> Path:
    """The post a notebook names (`post_name`): from the root of the project the notebook
    lies in, else of the current folder's."""
    if Path(name).is_absolute():
        return Path(name)
    try:
        root = find_root(notebook.absolute().parent)
    except UsageError:
        root = find_root(Path.cwd())
    return root / name


def author_notebook_name(session: Session) -> str:
    return f"{Path(session.post).stem}.{session.env}.ipynb"


def write_author_notebook(notebook: NotebookNode, path: Path) -> list[Path]:
    """The notebook, and its jupytext py:percent twin beside it (for editors and diffs)."""
    write(notebook, path)
    twin = path.with_suffix(".py")
    twin.write_text(jupytext.writes(notebook, fmt="py:percent"), encoding="utf-8")
    return [path, twin]


def write(notebook: NotebookNode, path: Path) -> None:
    nbformat.validate(notebook)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(nbformat.writes(notebook) + "\n", encoding="utf-8")


def _cell(session: Session, index: int) -> NotebookNode:
    """The snippet's cell; `metadata.runner.line` is the post line before the cell's first
    compiled line (what a traceback's, a warning's or a crash's line N is added to): the fence,
    and the blank lines IPython drops before compiling."""
    snippet = session.snippets[index]
    source = cell_source(snippet) + injected(session, snippet)
    line = snippet.line + dropped_lines(source)
    metadata: dict[str, object] = {"runner": {"post": snippet.path, "line": line,
                                              "snippet": index}}
    if snippet.markers.timeout is not None:
        metadata["runner"]["timeout"] = snippet.markers.timeout  # type: ignore[index]
    if snippet.markers.raises:
        metadata["tags"] = ["raises-exception"]
    if snippet.markers.skip is not None:
        metadata["tags"] = ["skip-execution"]
    if snippet.markers.parameters:
        metadata["tags"] = ["parameters"]
    # Built as nbformat would, less its per-cell schema validation (1.6 ms a cell, run for
    # every session); the id is the snippet's place, so a run's notebook is the same each time.
    return from_dict({"id": f"snippet-{index}", "cell_type": "code", "metadata": metadata,
                      "execution_count": None, "outputs": [],
                      "source": source})


def dropped_lines(source: str) -> int:
    """How many leading lines IPython removes from a cell before compiling it (its
    `leading_empty_lines` transform: empty or whitespace-only lines before the first other
    line; none in a cell of only such lines), so its line 1 is the post's next one. Its other
    transforms keep every line where it is (a first line indented dedents the cell)."""
    lines = source.splitlines(keepends=True)  # as IPython splits it
    dropped = next((n for n, line in enumerate(lines) if line and not line.isspace()), 0)
    return "".join(lines[:dropped]).count("\n")  # a form feed is no line to the compiler


def is_doctest(code: str) -> bool:
    """A block written as an interactive session (`>>> ` prompts) is checked as a doctest."""
    first = next((line for line in code.splitlines() if line.strip()), "")
    return first.lstrip().startswith(">>>")


def cell_source(snippet: Snippet) -> str:
    """The code a snippet runs as: itself, or for a `>>>` session, doctest run over it in the
    kernel's own namespace. A failing example is raised again from a statement compiled at the
    example's line in this cell's file, so the error maps back to that post line. Install
    lines (`%pip install x`) become `pass`: the planner checked them against the env's lock."""
    code = neutralized(snippet.code).rstrip("\n")
    if not is_doctest(code):
        return code
    return _DOCTEST.format(source=repr(snippet.code), name=repr(f"{snippet.path}:{snippet.line}"))


_DOCTEST = """\
import doctest as _runner_doctest, sys as _runner_sys
_runner_test = _runner_doctest.DocTestParser().get_doctest({source}, {{}}, {name}, None, 0)
_runner_test.globs = globals()  # examples share the kernel's namespace, as cells do
try:
    _runner_doctest.DebugRunner(optionflags=_runner_doctest.ELLIPSIS).run(
        _runner_test, clear_globs=False)
except (_runner_doctest.DocTestFailure, _runner_doctest.UnexpectedException) as _runner_fail:
    _runner_error = (
        _runner_fail.exc_info[1] if isinstance(_runner_fail, _runner_doctest.UnexpectedException)
        else AssertionError(f"expected {{_runner_fail.example.want!r}}, "
                            f"got {{_runner_fail.got!r}}"))
    exec(compile("\\n" * _runner_fail.example.lineno + "raise _runner_error from None",
                 _runner_sys._getframe().f_code.co_filename, "exec"),
         {{"_runner_error": _runner_error}})"""


def _metadata(session: Session) -> dict[str, object]:
    return {
        "kernelspec": {"name": kernel_name(session.env), "display_name": f"runner: {session.env}",
                       "language": "python"},
        "language_info": {"name": "python"},
        "runner": {"post": session.post, "env": session.env},
    }
