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

import functools
import re
from dataclasses import dataclass

# Where a path ends: not inside a longer name (`/root` must not match `/rootfs`).
_END = r"(?=[/\s'\":,;)\]}>]|$)"
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
    pattern, shown = _compiled(places)
    if pattern is not None:
        text = pattern.sub(lambda match: shown[match.lastindex or 0], text)
    return _CELL.sub("<cell>", text).replace(_POST, places.post)


@functools.lru_cache(maxsize=64)
def _compiled(places: Places) -> tuple[re.Pattern[str] | None, dict[int, str]]:
    """One pattern for all the places (longest first), and what each group becomes."""
    pairs = _replacements(places)
    if not pairs:
        return None, {}
    alternatives = [f"({re.escape(path)}{'' if path.endswith('/') else _END})"
                    for path, _ in pairs]
    return re.compile("|".join(alternatives)), {n: shown for n, (_, shown) in
                                                enumerate(pairs, 1)}


def _cell_lines(text: str, filename: str, post: str, fence: int) -> str:
    """`FILE:LINE` (warnings) and `File "FILE", line LINE` (frames) of one cell -> the post."""
    if filename not in text:
        return text
    name = re.escape(filename)
    text = re.sub(name + r":(\d+)", lambda m: f"{post}:{fence + int(m[1])}", text)
    return re.sub(r'File "' + name + r'", line (\d+)',
                  lambda m: f'File "{post}", line {fence + int(m[1])}', text)


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
