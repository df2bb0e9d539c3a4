"""runner.writeback: output blocks spliced into posts, checked against golden files.

tests/fixtures/writeback/CASE.md is a post and CASE.expected.md is what `render` must give for
the outputs in `CASES` below. The goldens are plain LF files; the CRLF variants are made here.
"""

from __future__ import annotations

import difflib
import re
import string
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt
from markdown_it.token import Token

from runner.errors import PostError
from runner.markdown import OUTPUT_END as END
from runner.markdown import OUTPUT_LABEL, parse, split_lines
from runner.model import Output, Post, Region
from runner.writeback import normalize, output_block, render

FIXTURES = Path(__file__).parent / "fixtures" / "writeback"

# The outputs each golden case is rendered with, keyed by fence line (1-based).
CASES: dict[str, dict[int, Output]] = {
    "plain": {  # 19 is not run: untouched; the bash block is not a snippet
        7: Output("hello\n"),
        13: Output("to stdout\n", "to stderr\n"),
        23: Output("tilde\n"),
        32: Output("hidden\n"),
    },
    "replace": {  # existing blocks: replaced, shrunk to stdout only, removed; 42 untouched
        3: Output("new\n"),
        15: Output("out\n"),
        32: Output(),
    },
    "list_item": {
        5: Output("one\n\ntwo\n"),
        13: Output("", "oops\n"),
        21: Output("3\n"),
    },
    "block_quote": {
        3: Output("a\n\nb\n", "warn\n"),
        13: Output("last in its quote\n"),
    },
    "no_final_newline": {3: Output("last\n")},
    "backticks": {
        3: Output("```python\nx = 1\n```\n"),
        9: Output("````\n"),
        13: Output("inline `code` only\n"),
    },
}
# Cases whose input has no output block yet: rendering only inserts lines.
FRESH = ["plain", "list_item", "block_quote", "no_final_newline", "backticks"]

def read(name: str) -> str:
    return (FIXTURES / name).read_bytes().decode("utf-8")


def golden(case: str, ending: str = "\n") -> tuple[str, str]:
    """The case's input and expected text, with `ending` line endings."""
    return (read(f"{case}.md").replace("\n", ending),
            read(f"{case}.expected.md").replace("\n", ending))


def rekey(before: Post, after: Post, outputs: Mapping[int, Output]) -> dict[int, Output]:
    """The same outputs keyed by the fence lines of `after` (the same post, lines shifted)."""
    assert [s.code for s in after.snippets] == [s.code for s in before.snippets]
    return {new.line: outputs[old.line]
            for old, new in zip(before.snippets, after.snippets, strict=True)
            if old.line in outputs}


def empty_outputs(post: Post) -> dict[int, Output]:
    return {s.line: Output() for s in post.snippets}


ENDINGS = pytest.mark.parametrize("ending", ["\n", "\r\n"], ids=["lf", "crlf"])


# --- golden files ----------------------------------------------------------------------------


@ENDINGS
@pytest.mark.parametrize("case", list(CASES))
def test_golden(case: str, ending: str) -> None:
    text, expected = golden(case, ending)
    post = parse(f"{case}.md", text)
    outputs = CASES[case]
    assert set(outputs) <= {s.line for s in post.snippets}  # the keys are real fence lines
    result = render(post, outputs)
    assert result == expected
    if ending == "\r\n":  # every inserted line uses the post's CRLF
        assert "\n" not in result.replace("\r\n", "")


@pytest.mark.parametrize("case", list(CASES))
def test_golden_with_bom(case: str) -> None:
    text, expected = golden(case, "\r\n")
    assert render(parse("p.md", "\ufeff" + text), CASES[case]) == "\ufeff" + expected


def test_golden_files_are_plain_lf() -> None:
    for path in FIXTURES.glob("*.md"):
        assert b"\r" not in path.read_bytes(), path.name
    assert not read("no_final_newline.md").endswith("\n")
    assert not read("no_final_newline.expected.md").endswith("\n")


def rendered(case: str) -> tuple[str, str]:
    """The case's input, and what `render` makes of it with the case's outputs (what the
    structural tests below look at; the golden tests compare it with the expected file)."""
    text, _ = golden(case)
    return text, render(parse("p.md", text), CASES[case])


def test_list_item_block_keeps_the_item_indentation() -> None:
    text, made = rendered("list_item")
    inserted = _inserted_lines(text, made)
    assert inserted
    for line in inserted:
        assert line == "\n" or line.startswith("  "), line
    assert "   *Verified output:*\n" in inserted  # the ordered item's three spaces


def test_block_quote_block_keeps_the_quote_prefix() -> None:
    text, made = rendered("block_quote")
    inserted = _inserted_lines(text, made)
    assert inserted
    for line in inserted:
        assert line == ">\n" or line.startswith("> "), line
    assert ">\n" in inserted  # blank lines in the quote are a bare '>'


def test_output_fence_is_longer_than_any_backtick_run() -> None:
    _, made = rendered("backticks")
    lines = split_lines(made)
    assert "````text runner:output\n" in lines
    assert "`````text runner:output\n" in lines
    assert "```text runner:output\n" in lines


def _inserted_lines(old: str, new: str) -> list[str]:
    a, b = split_lines(old), split_lines(new)
    matcher = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    return [line for tag, _, _, j1, j2 in matcher.get_opcodes() if tag == "insert"
            for line in b[j1:j2]]


# --- properties of render on the goldens -----------------------------------------------------


@ENDINGS
@pytest.mark.parametrize("case", list(CASES))
def test_render_is_idempotent(case: str, ending: str) -> None:
    text, expected = golden(case, ending)
    post = parse("p.md", text)
    rendered = parse("p.md", render(post, CASES[case]))
    assert rendered.text == expected
    assert render(rendered, rekey(post, rendered, CASES[case])) == expected


@ENDINGS
@pytest.mark.parametrize("case", [c for c in FRESH if c != "no_final_newline"])
def test_fresh_post_only_gains_lines(case: str, ending: str) -> None:
    text, _ = golden(case, ending)
    a = split_lines(text)
    b = split_lines(render(parse("p.md", text), CASES[case]))
    opcodes = difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes()
    assert {tag for tag, *_ in opcodes} == {"equal", "insert"}


@ENDINGS
@pytest.mark.parametrize("case", FRESH)
def test_empty_outputs_give_back_the_original(case: str, ending: str) -> None:
    text, expected = golden(case, ending)
    rendered = parse("p.md", expected)
    with_block = rekey(parse("p.md", text), rendered, CASES[case])
    assert [s.output is not None for s in rendered.snippets] == [
        s.line in with_block for s in rendered.snippets]
    assert render(rendered, empty_outputs(rendered)) == text


def test_removing_the_last_block_keeps_a_missing_final_newline() -> None:
    with_block = ("```python\nx\n```\n\n*Verified output:*\n\n```text runner:output\nx\n```"
                  "\n\n[//]: # (end of verified output)")
    post = parse("p.md", with_block)
    assert post.snippets[0].output == Region(3, 11)
    assert render(post, {1: Output()}) == "```python\nx\n```"


def test_last_block_without_final_newline_is_replaced_in_place() -> None:
    with_block = ("```python\nx\n```\n\n*Verified output:*\n\n```text runner:output\nold\n```"
                  "\n\n[//]: # (end of verified output)")
    post = parse("p.md", with_block)
    assert render(post, {1: Output("new")}) == with_block.replace("old", "new")


def test_empty_output_removes_an_existing_block() -> None:
    text, _ = golden("replace")
    post = parse("p.md", text)
    assert [s.output is not None for s in post.snippets] == [True, True, True, True]
    bare = render(post, empty_outputs(post))
    assert bare == (
        "# Recorded outputs\n\n"
        '```python\nprint("new")\n```\n\n'
        '```python\nimport sys\nprint("out")\n```\n\n'
        "```python\npass\n```\n\n"
        '```python\nprint("skipped")\n```\n'
    )
    assert all(s.output is None for s in parse("p.md", bare).snippets)


def test_empty_output_without_a_block_changes_nothing() -> None:
    text, _ = golden("plain")
    post = parse("p.md", text)
    assert render(post, empty_outputs(post)) == text
    assert render(post, {7: Output("   \n\n", "\x1b[0m")}) == text  # blank once normalized


@pytest.mark.parametrize("case", list(CASES))
def test_snippets_not_in_outputs_are_untouched(case: str) -> None:
    for text in golden(case):
        assert render(parse("p.md", text), {}) == text


def test_real_post_is_stable() -> None:
    """The project's published post fixture renders to itself with the outputs it records."""
    found = sorted((Path(__file__).parent / "fixtures" / "posts" / "published").glob("*.md"))
    assert found, "the published post fixture is missing"
    for post_path in found:
        text = post_path.read_bytes().decode("utf-8")
        post = parse(str(post_path), text)
        assert render(post, {}) == text
        assert render(post, _recorded_outputs(post)) == text


# --- output_block and normalize --------------------------------------------------------------


def test_stdout_and_stderr_go_to_separate_fences() -> None:
    (snippet,) = parse("p.md", "```python\nx\n```\n").snippets
    block = output_block(snippet, Output("out 1\nout 2\n", "err\n"))
    assert block == [
        "\n", "*Verified output:*\n",
        "\n", "```text runner:output\n", "out 1\n", "out 2\n", "```\n",
        "\n", "```text runner:stderr\n", "err\n", "```\n",
        "\n", END + "\n",
    ]
    assert output_block(snippet, Output("", "err\n")) == [
        "\n", "*Verified output:*\n", "\n", "```text runner:stderr\n", "err\n", "```\n",
        "\n", END + "\n",
    ]
    assert output_block(snippet, Output("only out")) == [
        "\n", "*Verified output:*\n", "\n", "```text runner:output\n", "only out\n", "```\n",
        "\n", END + "\n",
    ]
    assert output_block(snippet, Output(" \n", "\n")) == []
    assert output_block(snippet, Output("out", "err"), "\r\n") == [
        "\r\n", "*Verified output:*\r\n",
        "\r\n", "```text runner:output\r\n", "out\r\n", "```\r\n",
        "\r\n", "```text runner:stderr\r\n", "err\r\n", "```\r\n",
        "\r\n", END + "\r\n",
    ]


def test_stderr_only_block_is_found_again() -> None:
    post = parse("p.md", "```python\nx\n```\n\nafter\n")
    rendered = parse("p.md", render(post, {1: Output("", "warning\n")}))
    assert rendered.snippets[0].output == Region(3, 11)
    assert render(rendered, {1: Output("now out\n")}) == (
        "```python\nx\n```\n\n*Verified output:*\n\n```text runner:output\nnow out\n```\n"
        f"\n{END}\n\nafter\n"
    )


def test_normalize() -> None:
    assert normalize("\x1b[31mred\x1b[0m and \x1b[1;32mbold green\x1b[0m") == "red and bold green"
    assert normalize("\x1b[?25lcursor hidden\x1b[?25h") == "cursor hidden"
    assert normalize("trailing   \nspaces\t \n") == "trailing\nspaces"
    assert normalize("crlf\r\nlines\r\n") == "crlf\nlines"
    assert normalize("tail\n\n\n") == "tail"
    assert normalize("a\n\n  \nb") == "a\n\n\nb"  # inner blank lines stay, emptied
    assert normalize("  indented\n    more") == "  indented\n    more"  # leading spaces stay
    assert normalize("") == ""
    assert normalize("\x1b[0m  \n") == ""


def test_render_writes_normalized_output() -> None:
    post = parse("p.md", "```python\nx\n```\n")
    assert render(post, {1: Output("\x1b[31mred\x1b[0m   \r\nline 2  \n\n\n")}) == (
        "```python\nx\n```\n\n*Verified output:*\n\n```text runner:output\nred\nline 2\n```\n"
        f"\n{END}\n"
    )


# --- one snippet per hidden block --------------------------------------------------------

TWO_HIDDEN = """\
<!-- runner:hidden
```python
a = 1
```

```python
b = 2
```
-->
"""


def test_two_snippets_in_one_hidden_comment_are_refused_at_the_second() -> None:
    # Both outputs would go after the same `-->` line and could not be told apart again.
    with pytest.raises(PostError) as caught:
        parse("p.md", TWO_HIDDEN)
    assert caught.value.line == 6 and "one Python snippet" in caught.value.message
    mdx = TWO_HIDDEN.replace("<!-- runner:hidden", "{/* runner:hidden").replace("-->", "*/}")
    with pytest.raises(PostError) as caught:
        parse("p.mdx", mdx)
    assert caught.value.line == 6


# --- property: random posts ------------------------------------------------------------------

# Prose and code never make a fence, a comment end, a quote, a bullet or front matter by chance.
PROSE_CHARS = string.ascii_letters + string.digits + " .,;:!?()'\"/=+#%$"
CODE_CHARS = PROSE_CHARS + "[]{}_*<&|\\"
OUTPUT_CHARS = string.ascii_letters + string.digits + string.punctuation + "    \n"
ANSI = st.sampled_from(["\x1b[31m", "\x1b[0m", "\x1b[1;32m"])
FENCES = st.sampled_from(["```", "````", "\n```\n", "\n````python\n", "~~~", "\n  ```"])

prose_line = st.text(PROSE_CHARS, max_size=20)
code_line = st.text(CODE_CHARS, max_size=20)
output_text = st.lists(st.one_of(st.text(OUTPUT_CHARS, max_size=30), ANSI, FENCES),
                       max_size=4).map("".join)
outputs_strategy = st.one_of(st.none(), st.builds(Output, output_text, output_text))


@st.composite
def generated_posts(draw: st.DrawFn) -> tuple[str, list[str], str]:
    """A post (all lines ending in `ending`), the code of its snippets, and the ending."""
    ending = draw(st.sampled_from(["\n", "\r\n"]))
    lines: list[str] = []
    codes: list[str] = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["prose", "fence", "quote", "list", "hidden"]))
        if kind == "prose":
            lines += draw(st.lists(prose_line, min_size=1, max_size=4))
            continue
        code = draw(st.lists(code_line, max_size=4))
        fence = draw(st.sampled_from(["```", "~~~", "````"]))
        language = draw(st.sampled_from(["python", "py", "Python3", "python runner:skip"]))
        first, rest = {"fence": ("", ""), "quote": ("> ", "> "), "list": ("- ", "  "),
                       "hidden": ("", "")}[kind]
        if kind == "hidden":
            lines.append("<!-- runner:hidden")
        lines.append(first + fence + language)
        lines += [rest + c for c in code]
        lines.append(rest + fence)
        if kind == "hidden":
            lines.append("-->")
        codes.append("".join(c + "\n" for c in code))
    return "".join(line + ending for line in lines), codes, ending


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(generated=generated_posts(), data=st.data())
def test_render_round_trip_property(generated: tuple[str, list[str], str],
                                    data: st.DataObject) -> None:
    text, codes, ending = generated
    post = parse("p.md", text)
    assert [s.code for s in post.snippets] == codes
    assert all(s.output is None for s in post.snippets)
    assert render(post, {}) == text

    chosen = data.draw(st.lists(outputs_strategy, min_size=len(codes), max_size=len(codes)))
    outputs = {s.line: o for s, o in zip(post.snippets, chosen, strict=True) if o is not None}
    rendered_text = render(post, outputs)
    rendered = parse("p.md", rendered_text)
    assert [s.code for s in rendered.snippets] == codes
    if ending == "\r\n":
        assert "\n" not in rendered_text.replace("\r\n", "")

    # parse finds every block render wrote, where it wrote it, and reads back the outputs
    lines = split_lines(rendered_text)
    tokens = MarkdownIt("commonmark").parse(rendered_text)
    for old, new in zip(post.snippets, rendered.snippets, strict=True):
        output = outputs.get(old.line)
        block = output_block(new, output, ending) if output is not None else []
        if not block:
            assert new.output is None
            continue
        assert new.output is not None
        assert new.output.start == new.anchor
        assert lines[new.output.start:new.output.end] == block
        assert output is not None
        assert _read_back(tokens, new.output) == (normalize(output.stdout),
                                                  normalize(output.stderr))

    # idempotent, and empty outputs strip every block: the original text exactly
    assert render(rendered, rekey(post, rendered, outputs)) == rendered_text
    assert render(rendered, empty_outputs(rendered)) == text


def _read_back(tokens: list[Token], region: Region) -> tuple[str, str]:
    """stdout and stderr as a Markdown reader sees them in the block's fences."""
    found = {"runner:output": "", "runner:stderr": ""}
    for token in tokens:
        if token.type == "fence" and token.map and region.start <= token.map[0] < region.end:
            (marker,) = [w for w in token.info.split() if w in found]
            found[marker] = token.content.removesuffix("\n")
    return found["runner:output"], found["runner:stderr"]


def _recorded_outputs(post: Post) -> dict[int, Output]:
    """The outputs a post records, read back from its blocks."""
    tokens = MarkdownIt("commonmark").parse(post.text.replace("\r\n", "\n"))
    return {s.line: Output(*_read_back(tokens, s.output)) for s in post.snippets if s.output}


def test_figure_alt_text_is_normalized_and_found_again() -> None:
    from runner.model import Part

    post = parse("p.md", "```python\nx\n```\n")
    odd = Output(parts=(Part("image", "<Matrix([[1, 2]]) at 0x7F3A2B1C0D90>", png=b"png"),))
    once = render(post, {1: odd})
    assert "![Matrix( 1, 2 ) at 0x...](p/snippet-1-figure-1.png)" in once
    again = parse("p.md", once)
    assert again.snippets[0].output is not None
    assert render(again, {1: odd}) == once


def test_figure_folders_of_md_and_mdx_posts_differ() -> None:
    from runner.writeback import figure_folder

    assert figure_folder("posts/x.md") == "x"
    assert figure_folder("posts/x.mdx") == "x.mdx.figures" != figure_folder("posts/x.markdown")


def test_a_post_with_nothing_run_gets_no_stamp() -> None:
    from runner.writeback import stamp, stamp_value

    text = "---\ntitle: prose only\n---\n\nNo code.\n"
    assert stamp_value([], {}) == "" and stamp(text, "") == text


# --- output that stays in its block ----------------------------------------------------------

MD = MarkdownIt("commonmark").enable("table")  # as parse sees a post: GFM tables on


def _html_tokens(text: str) -> list[tuple[str, str]]:
    """Every raw HTML token markdown-it finds in `text`, blocks and inline."""
    tokens = MD.parse(text)
    every = [*tokens, *(child for t in tokens for child in t.children or [])]
    return [(t.type, t.content) for t in every if t.type in ("html_block", "html_inline")]


def test_normalize_shows_what_a_terminal_shows_and_escapes_other_controls() -> None:
    assert normalize("10%\r50%\r100%\n") == "100%"  # a progress bar: its last state
    assert normalize("abcd\rX") == "Xbcd"  # overwritten from the start, the rest stays
    assert normalize("done\r\n") == "done"
    assert normalize("\x1b]8;;https://x.org\x07link\x1b]8;;\x1b\\ \x1b]0;title\x07") == "link"
    assert normalize("\x1b(Bplain\x1b7\x1b[2K") == "plain"
    assert normalize("a\x00b\x07c\x08e\x0cf\x7fg\x1b") == "a\\x00b\\x07c\\x08e\\x0cf\\x7fg\\x1b"
    assert normalize("\x1bd \x1b]0;no end") == " 0;no end"  # ESC d: an escape; a cut OSC
    assert normalize("c1\x85 and\u2028sep") == "c1\\x85 and\\u2028sep"
    assert normalize("tab\tkept") == "tab\tkept"


# What changes how text around it reads while showing nothing: bidi controls, zero-width
# characters, tag characters (written here as escapes, as the runner must write them).
INVISIBLE = ["\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068",
             "\u2069", "\u200e", "\u200f", "\u061c", "\u200b", "\u200c", "\u200d", "\u2060",
             "\ufeff", "\U000e0000", "\U000e0001", "\U000e0041", "\U000e007f"]
UNSEEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060"
                    "\u2066-\u2069\ufeff\U000e0000-\U000e007f]")


@pytest.mark.parametrize("char", INVISIBLE)
def test_invisible_characters_are_written_as_escapes(char: str) -> None:
    from runner.model import Part

    escape = char.encode("unicode_escape").decode()  # `\u202e`, `\U000e0041`
    assert normalize(f"a{char}b") == f"a{escape}b"
    post = parse("p.md", "```python\nx\n```\n")
    output = Output(f"ok {char}\n", f"warn{char}", (Part("text", f"ok {char}\n"),
                    Part("table", "df", html=f"<table><tr><td>c{char}</td></tr></table>")))
    written = render(post, {1: output})
    assert char not in written and UNSEEN.search(written) is None
    assert f"ok {escape}" in written and f"warn{escape}" in written and f"c{escape}" in written
    assert render(parse("p.md", written), {1: output}) == written  # verify agrees with update


def test_a_reversed_line_reads_as_it_runs() -> None:
    """Trojan Source: RLO makes `x = "admin"; # user` show reversed; recorded, it is visible."""
    post = parse("p.md", "```python\nx\n```\n")
    written = render(post, {1: Output('access = "user\u202e \u2066# admin\u2069 \u2066"\n')})
    assert 'access = "user\\u202e \\u2066# admin\\u2069 \\u2066"' in written


def test_carriage_return_in_a_list_item_stays_in_its_block() -> None:
    # A lone \r was a line break to markdown-it: the fence ended, the <script> became raw HTML,
    # and the block was not found again, so each update added another copy.
    text = "- item\n\n  ```python\n  print(1)\n  ```\n\nafter\n"
    post = parse("p.md", text)
    output = {post.snippets[0].line: Output("a\r<script>alert(1)</script>\n")}
    once = render(post, output)
    assert "\r" not in once and _html_tokens(once) == []
    again = parse("p.md", once)
    assert again.snippets[0].output is not None
    assert render(again, output) == once


def test_table_cells_are_text_not_html() -> None:
    from runner.writeback import markdown_table

    html = ("<table><thead><tr><th>&lt;b&gt;</th><th>a|b</th></tr></thead><tbody><tr>"
            "<td>&lt;script&gt;alert(2)&lt;/script&gt;</td><td>&amp;lt; `x` \\| \\* ![](y)</td>"
            "</tr></tbody></table>")
    table = markdown_table(html)
    assert table[2] == ("| &lt;script&gt;alert(2)&lt;/script&gt; | "
                        "&amp;lt; \\`x\\` \\\\\\| \\\\* !\\[](y) |")
    assert _html_tokens("\n".join(table)) == []
    cells = [t.content for t in MD.parse("\n".join(table)) if t.type == "inline"]
    shown = [MD.renderInline(cell) for cell in cells]  # what a reader sees, HTML-escaped
    assert shown == ["&lt;b&gt;", "a|b", "&lt;script&gt;alert(2)&lt;/script&gt;",
                     "&amp;lt; `x` \\| \\* ![](y)"]


@pytest.mark.parametrize(("name", "destination"), [
    ("posts/my post.md", "my%20post/snippet-1-figure-1.png"),
    ("posts/a (draft).md", "a%20%28draft%29/snippet-1-figure-1.png"),
    ("posts/100% #1?.md", "100%25%20%231%3F/snippet-1-figure-1.png"),
    ("posts/café.md", "café/snippet-1-figure-1.png"),
])
def test_figure_links_are_valid_link_destinations(name: str, destination: str) -> None:
    from runner.model import Part
    from runner.writeback import figures

    post = parse(name, "```python\nx\n```\n")
    output = {1: Output(parts=(Part("image", "<Figure <b>]\n[x>", png=b"png"),))}
    once = render(post, output)
    assert f"![Figure b x]({destination})" in once
    [image] = [c for t in MD.parse(once) for c in t.children or [] if c.type == "image"]
    assert image.attrGet("src") == MD.normalizeLink(destination)
    assert list(figures(post, output)) == [f"{name[6:-3]}/snippet-1-figure-1.png"]  # the file
    again = parse(name, once)
    assert again.snippets[0].output is not None and render(again, output) == once


# Every container a snippet can sit in; "After." must stay a paragraph of its own.
CONTAINERS = {
    "top level": "Intro.\n\n```python\nprint(1)\n```\n\nAfter.\n",
    "list item": "- Intro.\n\n  ```python\n  print(1)\n  ```\n\n  After.\n\n- Next.\n",
    "block quote": "> Intro.\n>\n> ```python\n> print(1)\n> ```\n>\n> After.\n",
    "nested list": "- Outer.\n\n  1. Inner.\n\n     ```python\n     print(1)\n     ```\n\n"
                   "     After.\n",
    "quote in list": "- Intro.\n\n  > ```python\n  > print(1)\n  > ```\n  >\n  > After.\n",
    "list in quote": "> - Intro.\n>\n>   ```python\n>   print(1)\n>   ```\n>\n>   After.\n",
    "hidden": "<!-- runner:hidden\n```python\nprint(1)\n```\n-->\n\nAfter.\n",
}
HOSTILE = st.sampled_from([
    "\r", "\r\n", "\n", "\t", "\x00", "\x07", "\x08", "\x0b", "\x0c", "\x1b", "\x1b[31m",
    "\x1b]0;title\x07", "\x1b]8;;u\x1b\\", "\x7f", "\x85", "\u2028", "\u2029", "```", "````",
    "~~~", "-->", "<!--", "<script>alert(1)</script>", "<b>", "&lt;", "&amp;", "|", "\\", "`",
    "> ", "- ", "    ", "#", "---", "![x](y)", "[x]: y", OUTPUT_LABEL, END, *INVISIBLE,
])
hostile_text = st.lists(st.one_of(st.text(max_size=12), HOSTILE), max_size=8).map("".join)


@st.composite
def hostile_outputs(draw: st.DrawFn) -> Output:
    """Text, DataFrame tables and figures in any order, and stderr, all of hostile text."""
    from html import escape

    from runner.model import Part

    def table() -> Part:
        columns = draw(st.integers(1, 3))
        rows = [[escape(draw(hostile_text)) for _ in range(columns)] for _ in range(2)]
        head, body = (f"<tr>{''.join(f'<th>{c}</th>' for c in row)}</tr>" for row in rows)
        return Part("table", "df", html=f"<table><thead>{head}</thead><tbody>{body}</tbody>"
                                        "</table>")

    kinds = draw(st.lists(st.sampled_from(["text", "table", "image"]), max_size=3))
    parts = [table() if kind == "table" else Part(kind, draw(hostile_text), png=b"png")
             for kind in kinds]
    return Output(parts=tuple(parts), stderr=draw(hostile_text))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(container=st.sampled_from(list(CONTAINERS)), first=hostile_outputs(),
       second=hostile_outputs(), stdout=hostile_text,
       name=st.sampled_from(["p.md", "my post.md", "a (b).mdx", "x#y?%.md"]))
def test_any_output_stays_in_its_block_in_any_container(container: str, first: Output,
                                                        second: Output, stdout: str,
                                                        name: str) -> None:
    from runner.writeback import RenderOptions, _parts, figure_links, link_destination

    text = CONTAINERS[container]
    post = parse(name, text)
    line = post.snippets[0].line
    for output in (first, second, Output(stdout)):
        updated = render(post, {line: output})
        # (a) no HTML from the output: only what the post had, and every part where written;
        # no control or invisible character raw
        assert _html_tokens(updated) == _html_tokens(text)
        assert UNSEEN.search(updated) is None
        assert "<script" not in MD.render(updated)
        tokens = MD.parse(updated)
        assert "After." in [t.content for t in tokens if t.type == "inline"]
        links = figure_links(name, 1, output)
        parts = [p for p in _parts(output, RenderOptions(), links) if p]
        fences = [t for t in tokens if t.type == "fence" and "runner:" in t.info]
        assert len(fences) == sum(p[0].startswith("```") for p in parts)
        tables = [t for t in tokens if t.type == "table_open"]
        assert len(tables) == sum(p[0].startswith("|") for p in parts)
        sources = [c.attrGet("src") for t in tokens for c in t.children or []
                   if c.type == "image"]
        assert sources == [MD.normalizeLink(link_destination(link)) for link in links]
        assert not [c for t in tokens for c in t.children or [] if c.type == "link_open"]
        # (b) the block is found again, and updating again is a fixed point
        again = parse(name, updated)
        assert (again.snippets[0].output is not None) == bool(parts)
        assert render(again, {line: output}) == updated
        # ... also when it replaces another block
        assert render(again, {line: second}) == render(post, {line: second})


# --- figures that fit real blogs -------------------------------------------------------------


def _figure_post(name: str, *alts: str) -> tuple[Post, dict[int, Output]]:
    from runner.model import Part

    post = parse(name, "Intro.\n\n```python\nx\n```\n")
    parts = tuple(Part("image", alt, png=b"png") for alt in alts)
    return post, {post.snippets[0].line: Output(parts=parts)}


def test_figure_alt_text_is_its_title_or_says_which_figure_it_is() -> None:
    post, outputs = _figure_post("p.md", "Loss per epoch", "<Figure size 640x480 with 1 Axes>",
                                 "", "Figure size 400x300 with 2 Axes", "a ]title[ <b>\n`x`")
    text = render(post, outputs)
    assert "![Loss per epoch](p/snippet-1-figure-1.png)" in text
    assert "![Figure 2 of snippet 1](p/snippet-1-figure-2.png)" in text
    assert "![Figure 3 of snippet 1](p/snippet-1-figure-3.png)" in text
    assert "![Figure 4 of snippet 1](p/snippet-1-figure-4.png)" in text
    assert "![a title b x](p/snippet-1-figure-5.png)" in text  # cleaned: one plain label
    assert "Figure size" not in text
    assert render(parse("p.md", text), outputs) == text


NAMES = ["x.md", "x.mdx", "x.markdown", "a.mdx", "a-mdx.md", "a.mdx.figures.md", "...md", "..md",
         ".md", ".md.md", "x.mdx.md", "figures.md", "x.figures.md", "my post.md", "index.mdx"]


def test_no_two_post_names_share_a_figure_folder() -> None:
    from runner.writeback import figure_folder

    folders = {name: figure_folder(f"posts/{name}") for name in NAMES}
    assert len(set(folders.values())) == len(NAMES), folders
    assert folders["x.md"] == "x" and folders["my post.md"] == "my post"  # as before
    assert folders["...md"] == "...md.figures" and folders["..md"] == "..md.figures"
    assert folders["a.mdx"] == "a.mdx.figures" != folders["a-mdx.md"] == "a-mdx"
    assert not set(folders.values()) & {".", "..", "", "figures", *NAMES}


def test_a_hugo_page_bundle_keeps_its_figures_in_the_bundle() -> None:
    from runner.config import Figures
    from runner.writeback import figure_folder, figure_links, figures

    for name in ("content/posts/x/index.md", "content/posts/x/_index.md"):
        post, outputs = _figure_post(name, "squares")
        assert figure_folder(name) == "figures"
        assert "![squares](figures/snippet-1-figure-1.png)" in render(post, outputs)
        assert list(figures(post, outputs)) == ["figures/snippet-1-figure-1.png"]
        place = Figures(Path("/site/static/figures"), "/figures", Path("/site/content"))
        assert figure_links(name, 1, outputs[3], place) == ["figures/snippet-1-figure-1.png"]


def test_jekyll_figures_go_to_assets_with_site_links(tmp_path: Path) -> None:
    from runner.config import Figures
    from runner.writeback import RenderOptions, figures

    place = Figures(tmp_path / "assets/figures", "/assets/figures", tmp_path / "_posts")
    name = str(tmp_path / "_posts" / "2024" / "my post (1).md")
    post, outputs = _figure_post(name, "squares")
    text = render(post, outputs, RenderOptions(figures=place))
    link = "/assets/figures/2024/my%20post%20%281%29/snippet-1-figure-1.png"
    assert f"![squares]({link})" in text
    [image] = [c for t in MD.parse(text) for c in t.children or [] if c.type == "image"]
    assert image.attrGet("src") == link
    assert list(figures(post, outputs, place)) == [
        f"{tmp_path}/assets/figures/2024/my post (1)/snippet-1-figure-1.png"]
    outside = str(tmp_path / "drafts" / "d.md")  # not under the posts folder: beside it
    assert list(figures(_figure_post(outside, "t")[0], outputs, place)) == [
        "d/snippet-1-figure-1.png"]


def test_freshen_writes_figures_under_the_configured_folder(tmp_path: Path) -> None:
    from runner.config import Figures
    from runner.posts import freshen, write_fresh
    from runner.writeback import RenderOptions

    place = Figures(tmp_path / "static" / "figures", "/figures", tmp_path / "content")
    path = tmp_path / "content" / "a.mdx"
    path.parent.mkdir()
    post, outputs = _figure_post(str(path), "t")
    path.write_text(post.text)
    stale = tmp_path / "static" / "figures" / "a.mdx.figures" / "snippet-9-figure-1.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    fresh = freshen(path, post, outputs, "", RenderOptions(figures=place))
    drawn = stale.parent / "snippet-1-figure-1.png"
    assert list(fresh.pictures) == [drawn] and fresh.orphans == (stale,)
    assert "](/figures/a.mdx.figures/snippet-1-figure-1.png)" in fresh.text
    write_fresh(path, post.text, fresh)
    assert drawn.read_bytes() == b"png" and not stale.exists()


def test_freshen_keeps_figures_of_a_mdx_and_a_mdx_md_apart(tmp_path: Path) -> None:
    from runner.posts import freshen
    from runner.writeback import RenderOptions

    (tmp_path / "a-mdx").mkdir()
    theirs = tmp_path / "a-mdx" / "snippet-1-figure-1.png"
    theirs.write_bytes(b"a-mdx.md's figure")
    post, outputs = _figure_post(str(tmp_path / "a.mdx"), "t")
    fresh = freshen(tmp_path / "a.mdx", post, outputs, "", RenderOptions())
    assert list(fresh.pictures) == [tmp_path / "a.mdx.figures" / "snippet-1-figure-1.png"]
    assert theirs not in fresh.redrawn and not fresh.orphans


def test_figures_setting_is_read_and_checked(tmp_path: Path) -> None:
    from runner.config import Figures, load
    from runner.errors import UsageError

    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[tool.runner]\nposts = "_posts"\n'
                         'figures = { folder = "assets/figures", link = "/assets/figures/" }\n')
    root = tmp_path.resolve()
    assert load(tmp_path).figures == Figures(root / "assets/figures", "/assets/figures",
                                             root / "_posts")
    pyproject.write_text("[tool.runner]\n")
    assert load(tmp_path).figures is None
    for bad in ('"assets"', '{ folder = "../out", link = "/x" }',
                '{ folder = "assets", link = "https://cdn" }', '{ folder = "assets" }'):
        pyproject.write_text(f"[tool.runner]\nfigures = {bad}\n")
        with pytest.raises(UsageError, match="figures"):
            load(tmp_path)


def test_a_skipped_snippet_keeps_no_verified_output_block() -> None:
    """A block written by hand under a `runner:skip` snippet would pass for verified output
    (a reader does not see the marker): no run made it, so it goes."""
    fake = ("```python runner:skip=\"needs the network\"\nprint(train())\n```\n\n"
            "*Verified output:*\n\n```text runner:output\naccuracy: 0.99\n```\n\n"
            "[//]: # (end of verified output)\n")
    post = parse("p.md", "# Post\n\n" + fake + "\nAfter.\n")
    assert post.snippets[0].output is not None  # the runner's shape: it owns the block
    assert render(post, {}) == ("# Post\n\n```python runner:skip=\"needs the network\"\n"
                                "print(train())\n```\n\nAfter.\n")
