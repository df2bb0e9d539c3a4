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
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import PurePosixPath

from runner import __version__
from runner.config import DEFAULT_MAX_LINES
from runner.markdown import OUTPUT_END, OUTPUT_LABEL, body_start, newline, split_lines
from runner.model import EnvSpec, Output, Post, Session, Snippet

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
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


def normalize(text: str, patterns: Patterns = ()) -> str:
    """What is compared and written: no ANSI colours, addresses or timings (and the project's
    own patterns), no trailing spaces, no blank tail."""
    text = ANSI.sub("", text).replace("\r\n", "\n")
    for pattern, replacement in (*BUILTIN_PATTERNS, *patterns):
        text = pattern.sub(replacement, text)
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")


def render(post: Post, outputs: Mapping[int, Output],
           options: RenderOptions | None = None) -> str:
    """The post with each snippet in `outputs` (keyed by fence line) given its output block."""
    options = options or RenderOptions()
    lines = split_lines(post.text)
    line_end = newline(lines)
    numbered = {s.line: n for n, s in enumerate(post.snippets, 1)}
    edits = sorted(((s, outputs[s.line]) for s in post.snippets if s.line in outputs),
                   key=lambda pair: pair[0].anchor, reverse=True)
    for snippet, output in edits:
        links = figure_links(post.path, numbered[snippet.line], output)
        block = output_block(snippet, output, line_end, options, links)
        start, end = ((snippet.output.start, snippet.output.end) if snippet.output
                      else (snippet.anchor, snippet.anchor))
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


def figures(post: Post, outputs: Mapping[int, Output]) -> dict[str, bytes]:
    """Each figure's path (relative to the post's folder, as linked) and its PNG bytes."""
    found: dict[str, bytes] = {}
    for number, snippet in enumerate(post.snippets, 1):
        if snippet.line in outputs:
            links = figure_links(post.path, number, outputs[snippet.line])
            found.update(zip(links, outputs[snippet.line].images(), strict=True))
    return found


def figure_folder(post_path: str) -> str:
    """Figures live beside the post, in a folder named after it: posts/x.md -> posts/x/
    (posts/x.mdx -> posts/x-mdx/, so two posts never share one)."""
    path = PurePosixPath(post_path)
    return path.stem if path.suffix == ".md" else path.stem + path.suffix.replace(".", "-")


FIGURE_GLOB = "snippet-*-figure-*.png"


def figure_links(post_path: str, number: int, output: Output) -> list[str]:
    count = len(output.images())
    return [f"{figure_folder(post_path)}/snippet-{number}-figure-{k}.png"
            for k in range(1, count + 1)]


def output_block(snippet: Snippet, output: Output, line_end: str = "\n",
                 options: RenderOptions | None = None, links: Sequence[str] = ()) -> list[str]:
    """The lines of a snippet's output block (none when it printed nothing)."""
    options = options or RenderOptions()
    parts = [lines for lines in _parts(output, options, links) if lines]
    if not parts:
        return []
    prefix, blank = snippet.prefix, snippet.prefix.rstrip() + line_end
    block = [blank, prefix + OUTPUT_LABEL + line_end]
    for part in parts:
        block.append(blank)
        block += [(prefix + line).rstrip() + line_end if line else blank for line in part]
    return [*block, blank, prefix + OUTPUT_END + line_end]


def _parts(output: Output, options: RenderOptions, links: Sequence[str]) -> list[list[str]]:
    images = iter(links)
    parts: list[list[str]] = []
    for part in output.all_parts():
        if part.kind == "image":
            alt = re.sub(r"[\[\]\\\s]+", " ", normalize(part.text, options.patterns))
            alt = alt.strip("<> ") or "figure"
            parts.append([f"![{alt}]({next(images)})"])
        elif part.kind == "table" and (table := markdown_table(part.html, options.patterns)):
            parts.append(table)
        else:
            parts.append(_fence(_truncate(normalize(part.text, options.patterns),
                                          options.max_lines), "runner:output"))
    parts.append(_fence(normalize(output.stderr, options.patterns), "runner:stderr"))
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
    rows = [[normalize(cell, patterns).replace("|", "\\|").replace("\n", " ") for cell in row]
            for row in reader.rows]
    if reader.spans or not rows or len({len(r) for r in rows}) != 1:
        return []
    head_rows, body = rows[:reader.head_rows] or rows[:1], rows[reader.head_rows or 1:]
    header = [next((r[i] for r in head_rows if r[i]), "") for i in range(len(rows[0]))]
    return ["| " + " | ".join(row) + " |" for row in [header, ["---"] * len(header), *body]]


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
