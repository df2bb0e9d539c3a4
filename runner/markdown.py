"""Markdown text -> `Post`: front matter, Python snippets, markers and existing output blocks.

Parsing is markdown-it-py's: fences are found as tokens and the original lines are sliced by
`token.map`, never by a regex over fences, so backtick and tilde fences, longer fences, fences in
list items and block quotes, CRLF and BOM files all come out with their exact lines. The
markers in a fence's info string are read by `runner.markers` (the table of them). Pure: no I/O.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runner.errors import PostError
from runner.markers import (
    HIDDEN_CLOSE,
    HIDDEN_OPEN,
    MDX_HIDDEN_CLOSE,
    MDX_HIDDEN_OPEN,
    OUTPUT_MARKERS,
    parse_markers,
)
from runner.model import Post, Region, Snippet

if TYPE_CHECKING:
    from markdown_it import MarkdownIt
    from markdown_it.token import Token

POST_SUFFIXES = (".md", ".markdown", ".mdx")  # the files that are posts
PYTHON_LANGUAGES = frozenset({"python", "py", "python3"})
OUTPUT_LABEL = "*Verified output:*"
OUTPUT_END = "[//]: # (end of verified output)"  # a link definition: invisible everywhere
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")  # markdown-it's line breaks
_IMAGES = re.compile(r"(!\[[^\]]*\]\([^)\s]+\)\s*)+")


@functools.cache
def _markdown() -> MarkdownIt:
    """The parser, made at the first post parsed (a run of replayed verdicts parses none):
    GFM tables (verified DataFrames are tables); no inline parsing: only blocks and the raw
    text of paragraphs are read (a third less time a post)."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"maxNesting": MAX_NESTING}).enable("table").disable(
        ["inline", "text_join"])


# markdown-it stops reading a document, in silence, where blocks nest past its maxNesting
# (20 in the commonmark preset: a ten-deep list): every fence after it would be lost to the
# runner, and a failing snippet pass with no snippet run. Deeper than the commonmark preset
# allows, not so deep that markdown-it's recursion reaches Python's; a post that reaches it
# is an error (`_check_nesting`).
MAX_NESTING = 100


def _check_nesting(path: str, tokens: list[Token], offset: int = 0) -> None:
    deep = next((t for t in tokens if t.level >= MAX_NESTING - 1), None)
    if deep is not None:
        line = offset + (deep.map[0] + 1 if deep.map else 1)
        raise PostError(f"blocks nest more than {MAX_NESTING // 2} deep here: the runner "
                        "cannot read the post past this line", path, line)


def split_lines(text: str) -> list[str]:
    """Lines with their endings, broken exactly where markdown-it breaks them."""
    return _LINE.findall(text)


def newline(lines: list[str]) -> str:
    """The post's line ending: that of its first line that has one."""
    for line in lines:
        if line.endswith("\r\n"):
            return "\r\n"
        if line.endswith(("\n", "\r")):
            return line[-1]
    return "\n"


def body_start(lines: list[str]) -> int:
    """The index of the first line after the front matter (0 when there is none)."""
    end = _front_matter_end(lines)
    return end + 1 if end else 0


def _front_matter_end(lines: list[str]) -> int | None:
    """The index of the `---` or `...` line that closes the front matter opened by a first line
    `---`: 0 when there is no front matter, None when it is never closed."""
    if not lines or _strip_end(lines[0]).lstrip("\ufeff") != "---":
        return 0
    for index in range(1, len(lines)):
        if _strip_end(lines[index]) in ("---", "..."):
            return index
    return None


def parse(path: str, text: str) -> Post:
    lines = split_lines(text)
    front_matter, body_start = _front_matter(path, lines)
    source = ["\n"] * body_start + [_strip_end(line) + "\n" for line in lines[body_start:]]
    if source and source[0].startswith("\ufeff"):
        source[0] = source[0][1:]
    tokens = _markdown().parse("".join(source))
    _check_nesting(path, tokens)
    parts = _output_parts(tokens)
    snippets = [_snippet(path, lines, found, parts) for found in _fences(path, lines, tokens)]
    default_env, network, keep_going = _settings(path, front_matter)
    return Post(path=path, text=text, snippets=tuple(snippets), front_matter=front_matter,
                default_env=default_env, network=network, keep_going=keep_going)


@dataclass(frozen=True)
class _Found:
    """A Python fence: its token, the line offset of the text it was parsed from, and whether
    it sits in a hidden comment (then `anchor` is the line after the comment)."""

    token: Token
    offset: int
    hidden: bool
    anchor: int
    prefix_line: int  # the post line whose container prefix output lines take
    start: int  # the first line of its source: the fence, or the hidden block's opener


def _fences(path: str, lines: list[str], tokens: list[Token]) -> Iterator[_Found]:
    mdx_open: Token | None = None  # an open `{/* runner:hidden` paragraph (MDX)
    pending: list[Token] = []  # the Python fences inside it
    for token in tokens:
        text = token.content.strip() if token.type == "inline" else None
        if text == MDX_HIDDEN_OPEN:
            mdx_open, pending = token, []
        elif text == MDX_HIDDEN_CLOSE and mdx_open is not None and token.map:
            _one_per_hidden_block(path, pending, 0)
            opened = (mdx_open.map or [0])[0]
            yield from (_Found(f, 0, True, token.map[1], token.map[1] - 1, opened)
                        for f in pending)
            mdx_open = None
        elif token.type == "fence" and token.map and _language(token.info) in PYTHON_LANGUAGES:
            _check_closed(path, lines, token, 0)
            if mdx_open is not None:
                pending.append(token)
            else:
                yield _Found(token, 0, False, token.map[1], token.map[1] - 1, token.map[0])
        elif token.type == "html_block" and token.map and _is_hidden(token.content):
            yield from _hidden(path, lines, token)
    if mdx_open is not None:
        raise PostError(f"hidden block must end with a line '{MDX_HIDDEN_CLOSE}'", path,
                        (mdx_open.map or [0])[0] + 1)


def _hidden(path: str, lines: list[str], comment: Token) -> Iterator[_Found]:
    """Python fences inside `<!-- runner:hidden ... -->`: run like any other, never rendered."""
    assert comment.map is not None
    start, end = comment.map
    inner = comment.content.splitlines(keepends=True)
    if len(inner) < 2 or inner[-1].strip() != HIDDEN_CLOSE:
        raise PostError(f"hidden block must end with a line '{HIDDEN_CLOSE}'", path, start + 1)
    hidden = _markdown().parse("".join(inner[1:-1]))
    _check_nesting(path, hidden, start + 1)
    fences = [t for t in hidden
              if t.type == "fence" and t.map and _language(t.info) in PYTHON_LANGUAGES]
    _one_per_hidden_block(path, fences, start + 1)
    for token in fences:
        _check_closed(path, lines, token, start + 1)
        yield _Found(token, start + 1, True, end, end - 1, start)


def _one_per_hidden_block(path: str, fences: list[Token], offset: int) -> None:
    """Each hidden block's output goes after it: two snippets in one would share that place."""
    if len(fences) > 1 and fences[1].map:
        raise PostError("a hidden block holds one Python snippet: open another "
                        "hidden block for this one", path, offset + fences[1].map[0] + 1)


def _snippet(path: str, lines: list[str], found: _Found, parts: dict[int, int]) -> Snippet:
    token = found.token
    assert token.map is not None
    line = found.offset + token.map[0] + 1
    prefix = _prefix(lines[found.prefix_line])
    return Snippet(
        path=path,
        line=line,
        code=token.content,
        markers=parse_markers(path, line, token.info),
        hidden=found.hidden,
        anchor=found.anchor,
        prefix=prefix,
        output=_output_region(lines, found.anchor, parts),
        start=found.start,
    )


def _output_region(lines: list[str], anchor: int, parts: dict[int, int]) -> Region | None:
    """The runner-owned block right after a snippet: a blank line and the label, then parts
    (output fences, tables, figure links), each after a blank line, then a blank line and the
    end line. Anything else there means the block is not the runner's."""
    if [_content(lines, anchor), _content(lines, anchor + 1)] != ["", OUTPUT_LABEL]:
        return None
    index = anchor + 2
    while _content(lines, index) == "":
        if _content(lines, index + 1) == OUTPUT_END:
            return Region(anchor, index + 2)
        if index + 1 not in parts:
            return None
        index = parts[index + 1]
    return None


def _output_parts(tokens: list[Token]) -> dict[int, int]:
    """Start line -> end line of each block that can be part of an output block."""
    parts: dict[int, int] = {}
    for index, token in enumerate(tokens):
        if not token.map:
            continue
        output_fence = token.type == "fence" and _is_output(token.info)
        images = token.type == "paragraph_open" and _IMAGES.fullmatch(tokens[index + 1].content)
        if output_fence or images or token.type == "table_open":
            parts[token.map[0]] = token.map[1]
    return parts


def _content(lines: list[str], index: int) -> str | None:
    """A line without its container prefix and surrounding blanks (None past the end)."""
    if index >= len(lines):
        return None
    return _strip_end(lines[index]).lstrip(" \t>").strip()


def front_matter(path: str, text: str) -> dict[str, object]:
    """The post's front matter as YAML reads it (empty: none)."""
    return _front_matter(path, split_lines(text))[0]


def _front_matter(path: str, lines: list[str]) -> tuple[dict[str, object], int]:
    """YAML between a first line `---` and the next `---` or `...` line, and the body's start."""
    end = _front_matter_end(lines)
    if end is None:
        raise PostError("front matter opened here is never closed with '---'", path, 1)
    if end == 0:
        return {}, 0
    import yaml  # here: a run of replayed verdicts reads no front matter

    try:
        data = yaml.load("".join(_strip_end(x) + "\n" for x in lines[1:end]), _yaml_loader())
    except yaml.YAMLError as exc:
        # Where the broken construct began (an unclosed quote's opening) beats where it broke.
        mark = getattr(exc, "context_mark", None) or getattr(exc, "problem_mark", None)
        where = _YAML_LINE + mark.line if mark is not None else 1
        problem = " ".join(filter(None, (getattr(exc, "context", None),
                                         getattr(exc, "problem", None)))) or str(exc)
        raise PostError(f"invalid YAML front matter: {problem}", path, where) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PostError("front matter must be a YAML mapping", path, 2)
    return data, end + 1


_YAML_LINE = 2  # the post line of the front matter's first YAML line (after `---`)


@functools.cache
def _yaml_loader() -> Any:
    """PyYAML's safe loader, with libyaml's parser where PyYAML was built with it (20 times
    faster: it counts at 1000 posts), that refuses a key given twice in one mapping: YAML
    readers keep the last, `writeback.stamp` the first, so a second `verified_by` could show a
    site a stamp no run wrote. Checked on the composed nodes before anything is built (merge
    keys, `<<: *base`, are YAML's overrides, not keys given twice)."""
    import yaml

    base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class UniqueKeys(base):  # type: ignore[misc]
        def construct_document(self, node: yaml.Node) -> Any:
            _unique_keys(self, node)
            return super().construct_document(node)

    return UniqueKeys


def _unique_keys(loader: Any, root: Any) -> None:
    """A ConstructorError at the second of two equal keys of any mapping under `root`."""
    import yaml

    todo, done = [root], set()
    while todo:  # a loop, not recursion: a deep document cannot exhaust the stack
        node = todo.pop()
        if id(node) in done:  # an alias: its node is checked once
            continue
        done.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            todo += node.value
        elif isinstance(node, yaml.MappingNode):
            first: dict[object, Any] = {}
            for key_node, value_node in node.value:
                todo.append(value_node)
                if not isinstance(key_node, yaml.ScalarNode):
                    todo.append(key_node)  # a mapping as a key has keys of its own
                    continue
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                # a string key is its text; any other scalar (1, true, a date) as built
                key = (key_node.value if key_node.tag == "tag:yaml.org,2002:str"
                       else loader.construct_object(key_node))
                if key in first:
                    line = _YAML_LINE + first[key].start_mark.line
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} given twice (first at line {line})",
                        key_node.start_mark)
                first[key] = key_node


def _settings(path: str, front_matter: dict[str, object]) -> tuple[str | None, bool, bool]:
    """The post's `runner:` front matter: its default env, whether its snippets may use the
    network (`network: true`; off by default), and whether a failing snippet stops the rest
    (`keep-going: true`, Quarto's `error: true`; off by default)."""
    settings = front_matter.get("runner")
    if settings is None:
        return None, False, False
    if not isinstance(settings, dict) or set(settings) - {"env", "network", "keep-going"}:
        raise PostError("front matter 'runner' must be a mapping like "
                        "{env: NAME, network: true, keep-going: true}", path, 1)
    env, network = settings.get("env"), settings.get("network", False)
    keep_going = settings.get("keep-going", False)
    if ((env is not None and not isinstance(env, str)) or not isinstance(network, bool)
            or not isinstance(keep_going, bool)):
        raise PostError("front matter 'runner': env is a name, network and keep-going are "
                        "true or false", path, 1)
    return env, network, keep_going


def _check_closed(path: str, lines: list[str], token: Token, offset: int) -> None:
    assert token.map is not None
    start, end = token.map
    if token.content.count("\n") != end - start - 2:
        raise PostError(f"{token.markup}{token.info} fence opened here is never closed",
                        path, offset + start + 1)


def _language(info: str) -> str:
    return info.split(maxsplit=1)[0].lower() if info.strip() else ""


def _is_output(info: str) -> bool:
    return any(word in OUTPUT_MARKERS for word in info.split())


def _is_hidden(content: str) -> bool:
    return content.split("\n", 1)[0].strip() == HIDDEN_OPEN


def _prefix(line: str) -> str:
    """The container prefix of a fence line: what precedes the fence characters."""
    body = _strip_end(line)
    match = re.match(r"[ \t>]*", body)
    return match.group(0) if match else ""


def _strip_end(line: str) -> str:
    return line.rstrip("\r\n")
