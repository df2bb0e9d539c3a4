"""Results -> the post's new text: each snippet's output block spliced in right after it.

Pure: `render(post, outputs)` returns the new text, and the caller compares (verify) or writes
(update). Only runner-owned blocks are touched; every other byte of the post stays as it was.
A block is a blank line, the label, a blank line and a `runner:output` fence, then, when the
snippet wrote to stderr, a blank line and a `runner:stderr` fence. No output, no block.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from runner.markdown import OUTPUT_LABEL, split_lines
from runner.model import Output, Post, Snippet

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_UNIT = r"(?:ns|µs|us|ms|s|min)"
# Built-in normalisations, applied to all output before it is compared or written.
BUILTIN_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # object addresses: <Foo object at 0x7f3a2b1c0d90>
    (re.compile(r"\b0x[0-9a-fA-F]{6,16}\b"), "0x..."),
    # %timeit and %time: the figures change on every run
    (re.compile(rf"(?m)^[\d.]+ {_UNIT} ± [\d.]+ {_UNIT} per loop \(mean ± std\. dev\. of .*\)$"),
     "[timing elided by the runner]"),
    (re.compile(r"(?m)^(CPU times|Wall time): .*$"), r"\1: [elided by the runner]"),
)


def normalize(text: str, patterns: Sequence[tuple[re.Pattern[str], str]] = ()) -> str:
    """What is compared and written: no ANSI colours, addresses or timings (and the project's
    own patterns), no trailing spaces, no blank tail."""
    text = _ANSI.sub("", text).replace("\r\n", "\n")
    for pattern, replacement in (*BUILTIN_PATTERNS, *patterns):
        text = pattern.sub(replacement, text)
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")


def render(post: Post, outputs: Mapping[int, Output]) -> str:
    """The post with each snippet in `outputs` (keyed by fence line) given its output block."""
    lines = split_lines(post.text)
    newline = _newline(lines)
    edits = sorted(((s, outputs[s.line]) for s in post.snippets if s.line in outputs),
                   key=lambda pair: pair[0].anchor, reverse=True)
    for snippet, output in edits:
        block = output_block(snippet, output, newline)
        start, end = ((snippet.output.start, snippet.output.end) if snippet.output
                      else (snippet.anchor, snippet.anchor))
        if end == len(lines) and lines and not _ends_line(lines[-1]):
            # The post ends without a newline: so must it after the edit.
            if block and start == len(lines):  # inserting after that last line
                lines[-1] += newline
            if block:
                block[-1] = block[-1].rstrip("\r\n")
            elif start > 0:  # removing the block that ended the post
                lines[start - 1] = lines[start - 1].rstrip("\r\n")
        lines[start:end] = block
    return "".join(lines)


def output_block(snippet: Snippet, output: Output, newline: str = "\n") -> list[str]:
    """The lines of a snippet's output block (none when it printed nothing)."""
    stdout, stderr = normalize(output.stdout), normalize(output.stderr)
    if not stdout and not stderr:
        return []
    prefix = snippet.prefix
    blank = prefix.rstrip() + newline
    block = [blank, prefix + OUTPUT_LABEL + newline]
    for text, marker in ((stdout, "runner:output"), (stderr, "runner:stderr")):
        if text:
            fence = "`" * max(3, _longest_backtick_run(text) + 1)
            block += [blank, f"{prefix}{fence}text {marker}{newline}"]
            block += [(prefix + line).rstrip() + newline if line else blank
                      for line in text.split("\n")]
            block.append(prefix + fence + newline)
    return block


def _longest_backtick_run(text: str) -> int:
    return max((len(run) for run in re.findall(r"`+", text)), default=0)


def _newline(lines: list[str]) -> str:
    for line in lines:
        if line.endswith("\r\n"):
            return "\r\n"
        if line.endswith("\n"):
            return "\n"
        if line.endswith("\r"):
            return "\r"
    return "\n"


def _ends_line(line: str) -> bool:
    return line.endswith(("\n", "\r"))
