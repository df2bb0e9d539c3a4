"""Sessions -> notebooks: the one each session runs as, and the ones authors open in snippets/."""

from __future__ import annotations

import hashlib
from pathlib import Path

import jupytext
import nbformat
from nbformat import NotebookNode
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from runner import posts
from runner.config import Config
from runner.envs import kernel_name
from runner.errors import PostError, RunnerError
from runner.markdown import body_start, parse, recorded_output, split_lines
from runner.model import Post, Session, Snippet
from runner.parameters import injected
from runner.plan import plan


def session_notebook(session: Session) -> NotebookNode:
    """One code cell per snippet that runs, in post order, with its post line in the metadata."""
    cells = [_cell(session, index) for index, snippet in enumerate(session.snippets)
             if snippet.markers.skip is None]
    return new_notebook(cells=cells, metadata=_metadata(session))


def author_notebook(post: Post, session: Session) -> NotebookNode:
    """What an author opens: the post's prose as Markdown cells, this env's snippets as code
    cells with their last verified output, the other envs' snippets shown as code. Each code
    cell remembers which snippet it is and the code it was made from, so `runner sync` can
    bring an edit back into exactly that fence, and refuse when the post changed too."""
    lines = split_lines(post.text)
    cursor = body_start(lines)
    ours = {s.line for s in session.snippets}
    cells = [new_markdown_cell(
        f"*Made by the runner from `{post.path}` for the pinned environment `{session.env}`. "
        "Edit code here and bring it back with `python -m runner sync THIS_FILE`; edit prose "
        "in the post.*")]
    for number, snippet in enumerate(post.snippets, 1):
        prose = "".join(lines[cursor:snippet.start]).strip("\r\n")
        if prose.strip():
            cells.append(new_markdown_cell(prose.replace("\r\n", "\n")))
        if snippet.line in ours:
            cells.append(_author_cell(post, snippet, number))
        else:
            cells.append(new_markdown_cell(f"```python\n{snippet.code}```\n\n*(runs in another "
                                           "environment: see the post's other notebooks)*"))
        cursor = snippet.output.end if snippet.output else snippet.anchor
    tail = "".join(lines[cursor:]).strip("\r\n")
    if tail.strip():
        cells.append(new_markdown_cell(tail.replace("\r\n", "\n")))
    for index, cell in enumerate(cells):  # stable ids: the same post gives the same file
        cell.id = hashlib.sha256(f"{index}\0{cell.source}".encode()).hexdigest()[:12]
    return new_notebook(cells=cells, metadata=_metadata(session))


def code_hash(code: str) -> str:
    return hashlib.sha256(code.rstrip("\n").encode()).hexdigest()[:16]


def _author_cell(post: Post, snippet: Snippet, number: int) -> NotebookNode:
    metadata: dict[str, object] = {"runner": {"post": post.path, "line": snippet.line,
                                              "snippet": number, "code": code_hash(snippet.code)}}
    if snippet.hidden:
        metadata["tags"] = ["hidden-in-post"]
    cell = new_code_cell(source=snippet.code.rstrip("\n"), metadata=metadata)
    cell.outputs = [new_output("stream", name=name, text=text)
                    for name, text in recorded_output(post, snippet) if text]
    return cell


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
        for session in sessions:
            done += write_author_notebook(author_notebook(post, session),
                                          out / author_notebook_name(session))
    return done


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
    snippet = session.snippets[index]
    metadata: dict[str, object] = {"runner": {"post": snippet.path, "line": snippet.line,
                                              "snippet": index}}
    if snippet.markers.timeout is not None:
        metadata["runner"]["timeout"] = snippet.markers.timeout  # type: ignore[index]
    if snippet.markers.raises:
        metadata["tags"] = ["raises-exception"]
    if snippet.markers.skip is not None:
        metadata["tags"] = ["skip-execution"]
    if snippet.markers.parameters:
        metadata["tags"] = ["parameters"]
    return new_code_cell(source=cell_source(snippet) + injected(session, snippet),
                         metadata=metadata)


def is_doctest(code: str) -> bool:
    """A block written as an interactive session (`>>> ` prompts) is checked as a doctest."""
    first = next((line for line in code.splitlines() if line.strip()), "")
    return first.lstrip().startswith(">>>")


def cell_source(snippet: Snippet) -> str:
    """The code a snippet runs as: itself, or for a `>>>` session, doctest run over it in the
    kernel's own namespace. A failing example is raised again from a statement compiled at the
    example's line in this cell's file, so the error maps back to that post line."""
    code = snippet.code.rstrip("\n")
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
