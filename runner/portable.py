"""Output that reads the same on every machine. Pure: text and the session's places in, text out.

A kernel's output may name places that belong to this machine, this user or this run: the
file IPython compiled a cell into (`/tmp/ipykernel_30565/3647456122.py`), the env's folder in
the runner's cache, the base Python's folder, the scratch folder, HOME, the temp folder. Each
becomes something that is the same everywhere:

| in the output | recorded as |
|---|---|
| a cell's file and line (a warning, a frame) | the post and the post's line: `posts/x.md:57` |
| another IPython cell file | `<cell>` |
| `<env>/lib/python3.X/site-packages/numpy/...` | `numpy/...` (relative to site-packages) |
| the env's folder, the base Python's folder | `<env>`, `<python>` |
| the scratch folder (the snippet's working folder) | `.` |
| HOME, the temp folder | `~`, `<tmp>` |
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from runner.model import Output, Snippet

# Where a path ends: not inside a longer name (`/root` must not match `/rootfs`).
_PATH_ENDS = frozenset("/ \t\n\r\f\v'\":,;)]}>")
_CELL = re.compile(r"<tmp>/ipykernel_\d+/-?\d+\.py")
_POST = "\x00post\x00"  # stands for the post while the places are replaced


@dataclass(frozen=True)
class Places:
    """The machine-local places of one session, as its kernel sees them."""

    post: str  # the post, as the run names it
    cells: tuple[tuple[str, int], ...] = ()  # a cell's compiled file name -> its fence line
    scratch: str = ""
    env: str = ""  # the env's prefix
    python: str = ""  # the base Python's prefix
    home: str = ""
    tmp: str = ""
    user_home: str = ""  # the runner's own HOME (it may show in variables a kernel sees)


def portable(text: str, places: Places) -> str:
    """`text` with every machine-local place replaced (see the table above)."""
    if not text:
        return text
    for filename, fence in places.cells:  # the post's own path is no place to replace
        text = _cell_lines(text, filename, _POST, fence)
    for path, shown in _replacements(places):  # longest first
        if path in text:
            text = _replaced(text, path, shown)
    return _CELL.sub("<cell>", text).replace(_POST, places.post)


def _replaced(text: str, path: str, shown: str) -> str:
    """Each `path` in `text` that ends where a path may end (or ends with `/`) -> `shown`. By
    hand, not by a pattern: each session's places are new, and compiling them cost more than
    the rest of its output's handling."""
    pieces, start = [], 0
    while (found := text.find(path, start)) >= 0:
        end = found + len(path)
        whole = path.endswith("/") or end == len(text) or text[end] in _PATH_ENDS
        pieces += [text[start:found], shown if whole else path]
        start = end
    return "".join([*pieces, text[start:]])


def _cell_lines(text: str, filename: str, post: str, fence: int) -> str:
    """`FILE:LINE` (warnings) and `File "FILE", line LINE` (frames) of one cell -> the post."""
    if filename not in text:
        return text
    return _file_lines(text, filename, post, lambda n: str(fence + n), whole=False)


def _file_lines(text: str, name: str, shown: str, line: Callable[[int], str],
                whole: bool = True) -> str:
    """Each line of the file `name` that `text` names, as a warning does (`NAME:N`) and a
    frame does (`File "NAME", line N`) -> `shown` and `line(N)`; `whole`: a `NAME:N` that is
    the end of a longer path stays."""
    before = r"(?<![\w./-])" if whole else ""
    text = re.sub(before + re.escape(name) + r":(\d+)",
                  lambda m: f"{shown}:{line(int(m[1]))}", text)
    return re.sub(r'File "' + re.escape(name) + r'", line (\d+)',
                  lambda m: f'File "{shown}", line {line(int(m[1]))}', text)


def _replacements(places: Places) -> list[tuple[str, str]]:
    """Longest first, so a folder inside another is replaced as itself."""
    pairs = []
    if places.env:
        pairs += [(f"{places.env}/lib/python{v}/site-packages/", "")
                  for v in ("3", *(f"3.{n}" for n in range(8, 20)))]
        pairs.append((places.env, "<env>"))
    pairs += [(places.python, "<python>"), (places.scratch + "/", "./"),
              (places.scratch, "."), (places.home, "~"), (places.user_home, "~"),
              (places.tmp, "<tmp>")]
    return sorted(((path, shown) for path, shown in pairs if len(path.strip("/")) > 1),
                  key=lambda pair: -len(pair[0]))


def moved(output: Output, post: str, delta: int) -> Output:
    """`output` with the post's lines it names (`POST:N`, `File "POST", line N`) moved down by
    `delta`: the lines a post gains above every snippet when it is first stamped, so that what
    it records names the lines it will have."""
    if not delta:
        return output

    def move(text: str) -> str:
        return _file_lines(text, post, post, lambda n: str(n + delta))

    return Output(move(output.stdout), move(output.stderr),
                  tuple(replace(part, text=move(part.text)) for part in output.parts))


# How stored output (the execution cache) names the post and its lines: by the snippet of the
# session and the line within it, so output replayed after prose above moved a snippet, or for
# a post of another name, names the lines and the post as they are now.
_STORED_POST, _STORED_LINE = "\x00post\x00", re.compile(r"\x00line (\d+) (\d+)\x00")


def anchored(text: str, snippets: Sequence[Snippet]) -> str:
    """`text` with the post (`POST:N`, `File "POST", line N`) and each line of a snippet named
    by its place in `snippets` (a session's, in order)."""
    if not snippets or snippets[0].path not in text:
        return text
    post = snippets[0].path
    spans = [(s.line, s.line + s.code.count("\n") + 1) for s in snippets]

    def line(number: int) -> str:
        for index, (fence, last) in enumerate(spans):
            if fence < number <= last:
                return f"\x00line {index} {number - fence}\x00"
        return str(number)

    return _file_lines(text, post, _STORED_POST, line)


def unanchored(text: str, snippets: Sequence[Snippet]) -> str:
    """`anchored`, undone with the snippets' lines and post as they are now."""
    if "\x00" not in text or not snippets:
        return text
    text = _STORED_LINE.sub(
        lambda m: str(snippets[int(m[1])].line + int(m[2])) if int(m[1]) < len(snippets)
        else m[2], text)
    return text.replace(_STORED_POST, snippets[0].path)
