"""Results -> the post's new text: each snippet's output block spliced in right after it.

Pure: `render(post, outputs)` returns the new text and `figures(post, outputs)` the PNG files
its links name; the caller compares (verify) or writes (update). Only runner-owned blocks are
touched; every other byte of the post stays as it was. A block is a blank line and the label,
then each part after a blank line (a `runner:output` fence for text, a Markdown table for a
DataFrame, a link for a figure, a `runner:stderr` fence last), then a blank line and the
invisible end line. No output, no block.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath

from runner import __version__
from runner.compare import blocks_match
from runner.config import DEFAULT_MAX_LINES, Figures
from runner.markdown import (
    OUTPUT_END,
    OUTPUT_LABEL,
    POST_SUFFIXES,
    body_start,
    newline,
    split_lines,
)
from runner.markers import OUTPUT_FENCES
from runner.model import EnvSpec, Output, Post, Session, Snippet
from runner.visible import visible

# Terminal escape sequences, removed: CSI (colours, cursor moves: `\x1b[31m`), the strings
# of OSC, DCS, SOS, PM and APC ended by BEL or ST (titles, hyperlinks: `\x1b]8;;url\x07`), and
# two-character escapes (`\x1b(B`, `\x1b7`).
ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]"
                  r"|\x1b[\]PX^_][^\x07\x1b]*(?:\x07|\x1b\\)"
                  r"|\x1b[ -/]*[0-~]")
_UNIT = r"(?:ns|µs|μs|us|ms|s|min)"  # IPython writes µ or μ by version
Patterns = Sequence[tuple[re.Pattern[str], str]]
# Built-in normalisations, applied to all output before it is compared or written.
BUILTIN_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # object addresses: <Foo object at 0x7f3a2b1c0d90>
    (re.compile(r"\b0x[0-9a-fA-F]{6,16}\b"), "0x..."),
    # %timeit and %time: the figures change on every run
    (re.compile(rf"(?m)^[\d.]+ {_UNIT} ± [\d.]+ {_UNIT} per loop \(mean ± std\. dev\. of .*\)$"),
     "[timing elided by the runner]"),
    (re.compile(r"(?m)^(CPU times|Wall time): .*$"), r"\1: [elided by the runner]"),
    (re.compile(r"(?m)^The slowest run took [\d.]+ times longer than the fastest\..*\n?"), ""),
)


@dataclass(frozen=True)
class RenderOptions:
    patterns: Patterns = field(default=())  # the project's own (pattern, replacement) pairs
    max_lines: int = DEFAULT_MAX_LINES  # longer text output is cut, with a marker line
    tolerance: float = 0.0  # the project's, for numbers in text output (runner.compare)
    figures: Figures | None = None  # [tool.runner] figures; None: beside each post


def normalize(text: str, patterns: Patterns = ()) -> str:
    """What is compared and written, as a terminal shows it, in lines that stay lines.

    In order: terminal escape sequences (`ANSI`) removed; `\\r\\n` a newline, and a lone `\\r`
    as a terminal takes it (the text after it overwrites the line from its start: a progress
    bar keeps its last state); addresses and timings elided, then the project's own patterns;
    every other control character (NUL, BEL, ESC, backspace, form feed, DEL, C1, U+2028/9)
    and invisible character (bidi, zero-width, tags: `runner.visible`) as its escape (`\\x00`,
    `\\u2028`, `\\u202e`), tab and newline kept; no trailing spaces, no blank tail. So a
    snippet's output can never end its fence or its container early, nor hide in it."""
    text = ANSI.sub("", text).replace("\r\n", "\n")
    text = "\n".join(_carriage_returns(line) for line in text.split("\n"))
    for pattern, replacement in (*BUILTIN_PATTERNS, *patterns):
        text = pattern.sub(replacement, text)
    text = visible(text)
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")


def _carriage_returns(line: str) -> str:
    """A line as a terminal shows it: each `\\r` returns to its start, and the text after it
    overwrites what was there (`"50%\\r100%"` -> `"100%"`, `"abcd\\rX"` -> `"Xbcd"`)."""
    shown = ""
    for piece in line.split("\r"):
        shown = piece + shown[len(piece):]
    return shown


def render(post: Post, outputs: Mapping[int, Output],
           options: RenderOptions | None = None) -> str:
    """The post with each snippet in `outputs` (keyed by fence line) given its output block;
    a skipped snippet (`runner:skip`) has none: no run made one (a block written there by hand
    would pass for verified output)."""
    options = options or RenderOptions()
    lines = split_lines(post.text)
    line_end = newline(lines)
    numbered = {s.line: n for n, s in enumerate(post.snippets, 1)}
    skipped = [s for s in post.snippets if s.markers.skip is not None and s.output]
    edits = sorted([*((s, outputs[s.line] if s.markers.record_output else Output())
                      for s in post.snippets if s.line in outputs),
                    *((s, None) for s in skipped if s.line not in outputs)],
                   key=lambda pair: pair[0].anchor, reverse=True)
    for snippet, output in edits:
        if output is None:
            block: list[str] = []
        else:
            links = figure_links(post.path, numbered[snippet.line], output, options.figures)
            block = output_block(snippet, output, line_end, options, links,
                                 numbered[snippet.line])
        start, end = ((snippet.output.start, snippet.output.end) if snippet.output
                      else (snippet.anchor, snippet.anchor))
        if snippet.output and _recorded_stands(snippet, lines[start:end], block, options):
            continue  # within the snippet's tolerance or order: the recorded block stays
        if end == len(lines) and lines and not _ends_line(lines[-1]):
            # The post ends without a newline: so must it after the edit.
            if block and start == len(lines):  # inserting after that last line
                lines[-1] += line_end
            if block:
                block[-1] = block[-1].rstrip("\r\n")
            elif start > 0:  # removing the block that ended the post
                lines[start - 1] = lines[start - 1].rstrip("\r\n")
        lines[start:end] = block
    return "".join(lines)


def _recorded_stands(snippet: Snippet, recorded: list[str], fresh: list[str],
                     options: RenderOptions) -> bool:
    """Whether the recorded block differs from the fresh one only as `runner:tolerance` (else
    the project's) and `runner:unordered` allow, in its text fences."""
    markers = snippet.markers
    tolerance = options.tolerance if markers.tolerance is None else markers.tolerance
    return bool(tolerance or markers.unordered) and blocks_match(recorded, fresh, tolerance,
                                                                 markers.unordered)


STAMP_KEY = "verified_by"


def stamp_value(sessions: Sequence[Session], envs: Mapping[str, EnvSpec]) -> str:
    """What verified the post: the runner's version and each env's lock hash."""
    used = sorted({s.env for s in sessions})
    if not used:
        return ""  # nothing ran: nothing to stamp
    return f"runner {__version__}; " + ", ".join(f"{e} {envs[e].lock_hash[:12]}" for e in used)


def stamp(text: str, value: str) -> str:
    """The front matter's `verified_by` line set to `value`: replaced in place, or added as the
    last line of the front matter. A post without front matter gets none; no other line moves."""
    lines = split_lines(text)
    end = body_start(lines)  # the line after the closing `---`
    if not end or not value:
        return text
    line = f"{STAMP_KEY}: {json.dumps(value)}"
    for index in range(1, end - 1):
        body = lines[index].rstrip("\r\n")
        if body.startswith(f"{STAMP_KEY}:"):
            lines[index] = line + lines[index][len(body):]
            return "".join(lines)
    lines.insert(end - 1, line + newline(lines))
    return "".join(lines)


def figures(post: Post, outputs: Mapping[int, Output],
            place: Figures | None = None) -> dict[str, bytes]:
    """Each figure's file (relative to the post's folder, or absolute under `[tool.runner]
    figures`) and its PNG bytes."""
    found: dict[str, bytes] = {}
    folder = figure_folder(post.path, place)
    for number, snippet in enumerate(post.snippets, 1):
        if snippet.line in outputs and snippet.markers.record_output:  # output=none: no files
            count = len(outputs[snippet.line].images())
            found.update(zip(_figure_names(folder, number, count),
                             outputs[snippet.line].images(), strict=True))
    return found


BUNDLE_NAMES = ("index.md", "_index.md")  # a Hugo page bundle's page: figures in its bundle
BUNDLE_FOLDER = "figures"
_OWN = ".figures"  # what every folder name not made from a plain .md post's stem ends with


def figure_folder(post_path: str, place: Figures | None = None) -> str:
    """Where the post's figures are saved: relative to the post's folder, or absolute under
    `place` (`[tool.runner] figures`). See `_folders`."""
    return _folders(post_path, place)[0]


def _folders(post_path: str, place: Figures | None) -> tuple[str, str]:
    """The post's figure folder as a file path and as a link. Beside the post, named after it
    so that no two posts share one: posts/x.md -> posts/x/; a Hugo page bundle's
    content/x/index.md (or _index.md) -> content/x/figures/; any other name gets its whole
    name and `.figures` (posts/x.mdx -> posts/x.mdx.figures/, posts/...md ->
    posts/...md.figures/, posts/x.figures.md -> posts/x.figures.md.figures/), a name no plain
    .md stem gives, nor any post's own name. With `place`, a post under its posts folder (not
    a bundle) gets the same path inside `place.folder`, linked with `place.link`."""
    path = PurePosixPath(post_path)
    if path.name in BUNDLE_NAMES:
        return BUNDLE_FOLDER, BUNDLE_FOLDER
    own = _own_folder(path.name)
    where = Path(os.path.abspath(post_path)).parent
    if place is None or not where.is_relative_to(place.posts):
        return own, own
    sub = (where.relative_to(place.posts) / own).as_posix()
    return str(place.folder / sub), f"{place.link}/{sub}"


def _own_folder(name: str) -> str:
    stem, suffix = name[:-3], name[-3:]
    plain = (suffix == ".md" and stem.strip(".") and stem != BUNDLE_FOLDER
             and not stem.endswith((_OWN, *POST_SUFFIXES)))  # x.mdx.md: not the folder x.mdx
    return stem if plain else name + _OWN


FIGURE_GLOB = "snippet-*-figure-*.png"


def _figure_names(folder: str, number: int, count: int) -> list[str]:
    return [f"{folder}/snippet-{number}-figure-{k}.png" for k in range(1, count + 1)]


def figure_links(post_path: str, number: int, output: Output,
                 place: Figures | None = None) -> list[str]:
    """The snippet's figures as linked: relative to the post's folder, or under `place.link`
    (paths, not yet link destinations: see `link_destination`)."""
    return _figure_names(_folders(post_path, place)[1], number, len(output.images()))


def figure_file(post_path: str, link: str, place: Figures | None = None) -> str | None:
    """The file a figure link of the post names (as `figures` keys it), or None where the link
    is not in the post's own figure folder."""
    folder, linked = _folders(post_path, place)
    target = PurePosixPath(link)
    if str(target.parent) != linked or not target.match(FIGURE_GLOB):
        return None
    return f"{folder}/{target.name}"


def snippet_figure_links(post: Post, snippet: Snippet, output: Output,
                         place: Figures | None = None) -> list[str]:
    """`figure_links` of one of the post's snippets (its number is its place in the post)."""
    return figure_links(post.path, post.snippets.index(snippet) + 1, output, place)


# What a link destination may hold as it is: a post's name may hold anything else (a space, a
# parenthesis, `#`, `?`, `%`, `<`, a newline), and those are percent-encoded.
_LINK_SAFE = re.compile(r"[^\w\-.~/!$&'*+,;=@]")


def link_destination(path: str) -> str:
    """A relative file path as a CommonMark link destination that every renderer reads as that
    file: `my post (draft)/a.png` -> `my%20post%20%28draft%29/a.png`. Letters and digits of
    any script stay as they are."""
    return _LINK_SAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), path)


# matplotlib's repr of a figure (or nothing), which says nothing a reader needs: such a figure
# is named by its place instead ("Figure 2 of snippet 3", as its file is named: stable when
# prose above it changes, unlike a line number).
_GENERIC_FIGURE = re.compile(r"<?Figure size [\d.]+x[\d.]+ with \d+ Axes>?|figure|")


def _alt_text(text: str, fallback: str = "figure") -> str:
    """A figure's plain text (its title) as alt text that stays one plain image label:
    letters, digits and harmless punctuation, every other run of characters one space (no
    `]`, `<`, newline, backslash or backtick); `fallback` (plain already) for matplotlib's
    repr or nothing."""
    alt = re.sub(r"[^\w.,:;=+\-()#%/]+", " ", text).strip()
    return fallback if _GENERIC_FIGURE.fullmatch(alt) else alt


def output_block(snippet: Snippet, output: Output, line_end: str = "\n",
                 options: RenderOptions | None = None, links: Sequence[str] = (),
                 number: int = 0) -> list[str]:
    """The lines of a snippet's output block (none when it printed nothing); `number` is the
    snippet's place in the post (an untitled figure's alt text names it)."""
    options = options or RenderOptions()
    parts = [lines for lines in _parts(output, options, links, number) if lines]
    if not parts:
        return []
    prefix, blank = snippet.prefix, snippet.prefix.rstrip() + line_end
    block = [blank, prefix + OUTPUT_LABEL + line_end]
    for part in parts:
        block.append(blank)
        block += [(prefix + line).rstrip() + line_end if line else blank for line in part]
    return [*block, blank, prefix + OUTPUT_END + line_end]


def _parts(output: Output, options: RenderOptions, links: Sequence[str],
           snippet: int = 0) -> list[list[str]]:
    if len(links) != len(output.images()):
        raise ValueError(f"{len(output.images())} figures and {len(links)} links: give "
                         "output_block the figure links (`figure_links`)")
    images = enumerate(links, 1)
    parts: list[list[str]] = []
    for part in output.all_parts():
        if part.kind == "image":
            number, link = next(images)
            alt = _alt_text(normalize(part.text, options.patterns),
                            f"Figure {number} of snippet {snippet}")
            parts.append([f"![{alt}]({link_destination(link)})"])
        elif part.kind == "table" and (table := markdown_table(part.html, options.patterns)):
            parts.append(table)
        else:
            parts.append(_fence(_truncate(normalize(part.text, options.patterns),
                                          options.max_lines), OUTPUT_FENCES["stdout"]))
    parts.append(_fence(normalize(output.stderr, options.patterns), OUTPUT_FENCES["stderr"]))
    return parts


def _fence(text: str, marker: str) -> list[str]:
    if not text:
        return []
    fence = "`" * max(3, _longest_backtick_run(text) + 1)
    return [f"{fence}text {marker}", *text.split("\n"), fence]


def _truncate(text: str, max_lines: int) -> str:
    lines = text.split("\n")
    if len(lines) <= max_lines:
        return text
    cut = len(lines) - max_lines
    return "\n".join([*lines[:max_lines], f"... [{cut} more lines cut by the runner]"])


def markdown_table(html: str, patterns: Patterns = ()) -> list[str]:
    """A pandas DataFrame's HTML as a Markdown table; [] when it is not a plain grid."""
    reader = _TableReader()
    reader.feed(html)
    rows = [[table_cell(normalize(cell, patterns)) for cell in row] for row in reader.rows]
    if reader.spans or not rows or len({len(r) for r in rows}) != 1:
        return []
    head_rows, body = rows[:reader.head_rows] or rows[:1], rows[reader.head_rows or 1:]
    header = [next((r[i] for r in head_rows if r[i]), "") for i in range(len(rows[0]))]
    return ["| " + " | ".join(row) + " |" for row in [header, ["---"] * len(header), *body]]


def table_cell(text: str) -> str:
    """A cell's text as GFM table cell content that shows exactly that text, never HTML, a
    link or an image: `<`, `>` and `&` as entities (`<script>` stays text, `&lt;` stays
    `&lt;`), `|`, backtick and `[` escaped, a backslash before punctuation doubled, newlines
    spaces."""
    text = re.sub(r"\\(?=[!-/:-@\[-`{-~])", r"\\\\", text.replace("\n", " "))
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("|", "\\|").replace("`", "\\`").replace("[", "\\[")


class _TableReader(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.head_rows = 0
        self.spans = False
        self._in_head = False
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "thead":
            self._in_head = True
        elif tag == "tr":
            self.rows.append([])
            self.head_rows += self._in_head
        elif tag in ("td", "th") and self.rows:
            self._cell = []
            self.spans |= any(name in ("colspan", "rowspan") and value not in (None, "1")
                              for name, value in attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag == "thead":
            self._in_head = False
        elif tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _longest_backtick_run(text: str) -> int:
    return max((len(run) for run in re.findall(r"`+", text)), default=0)


def _ends_line(line: str) -> bool:
    return line.endswith(("\n", "\r"))
