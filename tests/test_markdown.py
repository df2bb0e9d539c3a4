"""runner.markdown.parse: snippets, markers, hidden blocks, front matter, output regions, errors.

Fixture posts live in tests/fixtures/markdown/ and are plain LF UTF-8 files; the CRLF and BOM
variants are made from them here, so every fixture is also checked with those encodings.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.errors import PostError
from runner.markdown import parse, split_lines
from runner.markers import parse_markers
from runner.model import Markers, Post, Region

FIXTURES = Path(__file__).parent / "fixtures" / "markdown"
FIXTURE_NAMES = sorted(p.name for p in FIXTURES.glob("*.md"))


def fixture_text(name: str) -> str:
    """The fixture's exact text (no newline translation)."""
    return (FIXTURES / name).read_bytes().decode("utf-8")


def fixture_post(name: str, text: str | None = None) -> Post:
    """Parse tests/fixtures/markdown/NAME (or `text` under that name)."""
    return parse(name, fixture_text(name) if text is None else text)


def crlf(text: str) -> str:
    return text.replace("\n", "\r\n")


def bom(text: str) -> str:
    return "\ufeff" + text


def summary(post: Post) -> list[tuple[int, str, Markers, bool]]:
    return [(s.line, s.code, s.markers, s.hidden) for s in post.snippets]


NONE = Markers()


# --- one fixture per case -----------------------------------------------------------------


def test_backtick_fence() -> None:
    post = fixture_post("backtick.md")
    assert summary(post) == [(5, 'greeting = "hello"\nprint(greeting)\n', NONE, False)]
    (snippet,) = post.snippets
    assert snippet.path == "backtick.md"
    assert snippet.anchor == 8  # the line after the closing fence
    assert snippet.prefix == ""
    assert snippet.output is None
    assert snippet.code_line == 6
    assert snippet.where == "backtick.md:5"
    assert post.default_env is None
    assert post.front_matter == {}


def test_tilde_fence_keeps_backtick_lines_as_code() -> None:
    post = fixture_post("tilde.md")
    assert summary(post) == [
        (3, 'text = """\n```\na backtick line does not close a tilde fence\n"""\nprint(text)\n',
         NONE, False),
        (11, 'print("four tildes, a space before the language")\n', NONE, False),
    ]
    assert [s.anchor for s in post.snippets] == [9, 13]


def test_longer_fence_content_is_not_a_snippet() -> None:
    post = fixture_post("longer_fence.md")
    # The ```python at line 8 is the content of a ````markdown fence: not a snippet.
    assert summary(post) == [
        (15, 'example = """\n```python\nprint("inner")\n```\n"""\nprint(example)\n', NONE,
         False),
    ]
    assert post.snippets[0].anchor == 22


def test_fence_in_list_items() -> None:
    post = fixture_post("list_item.md")
    assert summary(post) == [
        (6, "total = sum(range(4))\n\nprint(total)\n", NONE, False),
        (16, 'print("ordered")\n', NONE, False),
    ]
    assert [s.prefix for s in post.snippets] == ["  ", "   "]
    assert [s.anchor for s in post.snippets] == [10, 18]


def test_fence_in_block_quote() -> None:
    post = fixture_post("block_quote.md")
    assert summary(post) == [(5, "x = 1\n\nprint(x)\n", NONE, False)]
    assert post.snippets[0].prefix == "> "
    assert post.snippets[0].anchor == 9


def test_python_info_strings() -> None:
    post = fixture_post("info_strings.md")
    assert summary(post) == [
        (3, 'print("py")\n', NONE, False),
        (7, 'print("python3")\n', NONE, False),
        (11, 'print("Python")\n', NONE, False),
        (15, 'print("titled")\n', Markers(timeout=5.0), False),
    ]


def test_markers() -> None:
    post = fixture_post("markers.md")
    assert summary(post) == [
        (3, 'print("skipped, no reason")\n', Markers(skip=""), False),
        (7, 'print("skipped with a reason")\n', Markers(skip="needs network access"), False),
        (11, "undefined_name\n", Markers(raises="NameError"), False),
        (15, 'print("in ml")\n', Markers(env="ml", timeout=2.5), False),
        (19, 'raise ValueError("x")\n', Markers(skip="a, b", raises="ValueError"), False),
    ]


def test_non_python_blocks_are_ignored() -> None:
    post = fixture_post("non_python.md")
    # bash, dockerfile, no language, pythonic, text (with an unknown runner: word), an
    # indented code block and pycon are all left alone: only the last block is a snippet.
    assert summary(post) == [(29, 'print("the only snippet")\n', NONE, False)]


def test_hidden_block() -> None:
    post = fixture_post("hidden.md")
    assert summary(post) == [
        (3, "import math\n", NONE, False),
        (8, "print(round(math.pi, 2))\n", Markers(timeout=10.0), True),
        # the fence in the plain comment (line 14) is not a snippet, and a one-line
        # `<!-- runner:hidden -->` hides nothing: the fence after it is visible.
        (21, 'print("visible again")\n', NONE, False),
    ]
    hidden = post.snippets[1]
    lines = split_lines(post.text)
    assert lines[hidden.anchor - 1] == "-->\n"  # the output block goes after the comment
    assert hidden.anchor == 11
    assert hidden.prefix == ""
    assert hidden.output is None


def test_front_matter_sets_default_env() -> None:
    post = fixture_post("front_matter.md")
    assert post.default_env == "ml"
    assert post.front_matter == {
        "title": "Front matter", "tags": ["python", "markdown"], "runner": {"env": "ml"},
    }
    # snippet lines count from the post's first line, front matter included
    assert summary(post) == [
        (10, 'print("in the default env")\n', NONE, False),
        (14, 'print("in web")\n', Markers(env="web"), False),
    ]


def test_existing_output_regions() -> None:
    post = fixture_post("existing_output.md")
    lines = split_lines(post.text)
    regions = [s.output for s in post.snippets]
    assert [s.line for s in post.snippets] == [3, 15, 33, 45]
    assert regions == [Region(5, 13), Region(19, 31), None, Region(47, 55)]
    # the regions start right after the closing fence and take in the whole block
    end = "\n[//]: # (end of verified output)\n"
    assert "".join(lines[5:13]) == "\n*Verified output:*\n\n```text runner:output\nout\n```\n" + end
    assert "".join(lines[19:31]) == (
        "\n*Verified output:*\n\n```text runner:output\nout\n```\n"
        "\n```text runner:stderr\nerr\n```\n" + end
    )
    assert "".join(lines[47:55]) == (
        "\n  *Verified output:*\n\n  ```text runner:output\n  listed\n  ```\n"
        "\n  [//]: # (end of verified output)\n"
    )
    assert all(s.anchor == s.output.start for s in post.snippets if s.output)


def test_a_block_without_its_end_line_is_not_the_runners() -> None:
    text = "```python\nx\n```\n\n*Verified output:*\n\n```text runner:output\nout\n```\n"
    assert parse("p.md", text).snippets[0].output is None
    tail = "\n| a |\n|---|\n| 1 |\n\nAn author's paragraph.\n"
    assert parse("p.md", text + tail).snippets[0].output is None


# --- CRLF and BOM --------------------------------------------------------------------------


@pytest.mark.parametrize("variant", [crlf, bom, lambda t: bom(crlf(t))],
                         ids=["crlf", "bom", "bom+crlf"])
@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_crlf_and_bom_give_the_same_snippets(name: str, variant) -> None:
    lf = fixture_post(name)
    other = fixture_post(name, variant(fixture_text(name)))
    assert lf.snippets  # every fixture has at least one snippet to compare
    # same lines, code ("\n" endings), markers, hidden flag, anchors, prefixes, output regions
    assert other.snippets == lf.snippets
    assert other.default_env == lf.default_env
    assert other.front_matter == lf.front_matter
    assert other.text == variant(fixture_text(name))  # the text is kept exactly


def test_fixture_files_are_plain_lf() -> None:
    for name in FIXTURE_NAMES:
        data = (FIXTURES / name).read_bytes()
        assert b"\r" not in data and not data.startswith(b"\xef\xbb\xbf"), name


def test_lone_cr_line_endings() -> None:
    text = fixture_text("backtick.md")
    assert fixture_post("backtick.md", text.replace("\n", "\r")).snippets == (
        fixture_post("backtick.md").snippets
    )


# --- markers -------------------------------------------------------------------------------


@pytest.mark.parametrize(("info", "markers"), [
    ("python", Markers()),
    ("python runner:skip", Markers(skip="")),
    ("python runner:skip=", Markers(skip="")),
    ('python runner:skip="no network here"', Markers(skip="no network here")),
    ("python runner:raises=NameError", Markers(raises="NameError")),
    ("python runner:env=tensorflow", Markers(env="tensorflow")),
    ("python runner:timeout=60", Markers(timeout=60.0)),
    ("python runner:timeout=0.5", Markers(timeout=0.5)),
    ('python title="x.py" hl_lines="1 2" runner:env=ml', Markers(env="ml")),
    # output that varies for good reasons
    ("python runner:tolerance=1e-6", Markers(tolerance=1e-6)),
    ("python runner:tolerance=0.001", Markers(tolerance=1e-3)),
    ("python runner:tolerance=0", Markers(tolerance=0.0)),  # exact, whatever the project says
    ("python runner:unordered", Markers(unordered=True)),
    ("python runner:output=none", Markers(record_output=False)),
    ("python runner:unordered runner:tolerance=1e-3 runner:env=ml",
     Markers(env="ml", tolerance=1e-3, unordered=True)),
])
def test_parse_markers(info: str, markers: Markers) -> None:
    assert parse_markers("p.md", 7, info) == markers


# --- errors --------------------------------------------------------------------------------

ERRORS = {
    "unknown marker": ("# T\n\n```python runner:bogus\nx = 1\n```\n", 3),
    "unknown marker with value": ("# T\n\n\n```py runner:envs=ml\nx = 1\n```\n", 4),
    "env without value": ("```python runner:env\nx\n```\n", 1),
    "env with empty value": ("text\n\n```python runner:env=\nx\n```\n", 3),
    "raises without value": ("text\n\n```python runner:raises\nx\n```\n", 3),
    "timeout without value": ("text\n\n```python runner:timeout\nx\n```\n", 3),
    "zero timeout": ("text\n\n```python runner:timeout=0\nx\n```\n", 3),
    "negative timeout": ("text\n\n```python runner:timeout=-5\nx\n```\n", 3),
    "non-number timeout": ("text\n\n```python runner:timeout=soon\nx\n```\n", 3),
    "nan timeout": ("text\n\n```python runner:timeout=nan\nx\n```\n", 3),
    "infinite timeout": ("text\n\n```python runner:timeout=inf\nx\n```\n", 3),
    "timeout past a float's range": ("text\n\n```python runner:timeout=1e400\nx\n```\n", 3),
    "tolerance without value": ("text\n\n```python runner:tolerance\nx\n```\n", 3),
    "tolerance not a number": ("text\n\n```python runner:tolerance=tight\nx\n```\n", 3),
    "negative tolerance": ("text\n\n```python runner:tolerance=-1e-6\nx\n```\n", 3),
    "tolerance of 1 or more": ("text\n\n```python runner:tolerance=5\nx\n```\n", 3),
    "nan tolerance": ("text\n\n```python runner:tolerance=nan\nx\n```\n", 3),
    "infinite tolerance": ("text\n\n```python runner:tolerance=inf\nx\n```\n", 3),
    "unordered with a value": ("text\n\n```python runner:unordered=yes\nx\n```\n", 3),
    "output without value": ("text\n\n```python runner:output\nx\n```\n", 3),
    "output other than none": ("text\n\n```python runner:output=stderr\nx\n```\n", 3),
    "bad tolerance in a hidden block": (
        "text\n\n<!-- runner:hidden\n```python runner:tolerance=big\nx\n```\n-->\n", 4),
    "bad output after front matter": (
        "---\ntitle: t\n---\n\n```python runner:output=all\nx\n```\n", 5),
    "unbalanced quote": ('text\n\n```python runner:skip="oops\nx\n```\n', 3),
    "bad marker in a hidden block": (
        "text\n\n<!-- runner:hidden\n```python runner:nope\nx\n```\n-->\n", 4),
    "bad marker after front matter": (
        "---\ntitle: t\n---\n\n```python runner:timeout=-1\nx\n```\n", 5),
    "unclosed fence": ("# T\n\ntext\n\n```python\nx = 1\n", 5),
    "unclosed empty fence": ("# T\n\n```python\n", 3),
    "unclosed tilde fence": ("~~~python\nx = 1\n```\n", 1),
    "fence closed by a shorter fence": ("````python\nx = 1\n```\n", 1),
    "unclosed fence after a closed one": (
        "```python\na = 1\n```\n\n```python\nb = 2\n", 5),
    "unclosed fence in a block quote": ("> ```python\n> x = 1\n\nafter\n", 1),
    "unclosed fence in a list item": ("- item\n\n  ```python\n  x = 1\n\nafter\n", 3),
    "unclosed fence in a hidden block": (
        "text\n\n<!-- runner:hidden\n```python\nx = 1\n-->\n", 4),
    "hidden block not closed by a --> line": (
        "text\n\n<!-- runner:hidden\n```python\nx = 1\n```\n", 3),
    # YAML errors point at the line where the broken construct began
    "invalid YAML: unclosed flow sequence": ("---\ntitle: x\nbad: [1, 2\nmore: 3\n---\n", 3),
    "invalid YAML: unclosed quote": ('---\ntitle: "abc\nmore: 1\nz: 2\n---\n', 2),
    "invalid YAML: bad indentation": ("---\ntitle: x\n  bad: y\n---\n", 3),
    "invalid YAML: bad token": ("---\na: 1\nb: 2\nc: @x\n---\n", 4),
    # a key twice: the line of the second (readers keep the last, `update` stamps the first)
    "a key twice in front matter": ("---\nverified_by: a\ntitle: t\nverified_by: b\n---\n", 4),
    "a key twice, once quoted": ("---\nverified_by: a\n\"verified_by\": b\n---\n", 3),
    "a key twice in a nested mapping": ("---\nrunner:\n  env: a\n  env: b\n---\n", 4),
    "a key twice in a flow mapping": ("---\ntitle: t\nx: {a: 1, b: 2, a: 3}\n---\n", 3),
    "a key twice in a list's mapping": ("---\nitems:\n  - {a: 1}\n  - a: 1\n    a: 2\n---\n",
                                        5),
    "a key twice after a merge": ("---\nb: &b {x: 1}\nm:\n  <<: *b\n  y: 2\n  y: 3\n---\n", 6),
    "unclosed front matter": ("---\ntitle: x\n\n# Heading\n", 1),
    "front matter not a mapping": ("---\n- a\n- b\n---\n", 2),
    "runner setting not a mapping": ("---\nrunner: ml\n---\n", 1),
    "runner env not a string": ("---\nrunner: {env: [a]}\n---\n", 1),
}


@pytest.mark.parametrize("ending", ["\n", "\r\n"], ids=["lf", "crlf"])
@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_name_path_and_line(case: str, ending: str) -> None:
    text, line = ERRORS[case]
    path = "posts/broken.md"
    with pytest.raises(PostError) as info:
        parse(path, text.replace("\n", ending))
    error = info.value
    assert type(error) is PostError
    assert error.path == path
    assert error.line == line
    assert str(error).startswith(f"{path}:{line}: ")


def test_a_timeout_that_is_no_finite_number_is_one_line_at_its_fence() -> None:
    with pytest.raises(PostError) as info:
        parse("posts/x.md", "# T\n\n```python runner:timeout=inf\nx = 1\n```\n")
    assert str(info.value) == ("posts/x.md:3: runner:timeout must be a positive number of "
                               "seconds (finite), not 'inf'")


def test_markers_of_other_languages_are_not_checked() -> None:
    post = parse("p.md", "```bash runner:bogus runner:timeout=0\nls\n```\n")
    assert post.snippets == ()


def test_front_matter_closed_with_dots() -> None:
    post = parse("p.md", "---\nrunner: {env: web}\n...\n\n```python\nx\n```\n")
    assert post.default_env == "web"
    assert summary(post) == [(5, "x\n", NONE, False)]


def test_a_key_given_twice_in_front_matter_says_where_both_are() -> None:
    text = "---\ntitle: t\nverified_by: \"runner 1; sklearn 0\"\nverified_by: forged\n---\n# T\n"
    with pytest.raises(PostError) as info:
        parse("posts/x.md", text)
    assert str(info.value) == ("posts/x.md:4: invalid YAML front matter: key 'verified_by' "
                               "given twice (first at line 3)")


def test_merge_keys_override_without_being_duplicates() -> None:
    """`<<: *base` then a key of base: YAML's merge, not a key given twice (also when the
    merged mapping merges another)."""
    text = ("---\nbase: &b {x: 1, y: 2}\nmid: &m\n  <<: *b\n  x: 3\nmine:\n  <<: [*m, *b]\n"
            "  y: 4\n---\n")
    import yaml

    post = parse("p.md", text)
    assert post.front_matter["mid"] == {"x": 3, "y": 2}
    assert post.front_matter == yaml.load(text.strip("-\n"), yaml.CSafeLoader)


def test_empty_front_matter_and_no_runner_setting() -> None:
    assert parse("p.md", "---\n---\n").front_matter == {}
    post = parse("p.md", "---\ntitle: t\n---\n")
    assert post.default_env is None
    assert post.front_matter == {"title": "t"}


def test_front_matter_after_bom() -> None:
    post = parse("p.md", bom(crlf("---\nrunner:\n  env: ml\n---\n```python\nx\n```\n")))
    assert post.default_env == "ml"
    assert summary(post) == [(5, "x\n", NONE, False)]


def test_post_without_snippets() -> None:
    assert parse("p.md", "").snippets == ()
    assert parse("p.md", "# Just prose\n\nNo code here.").snippets == ()


def test_hidden_code_is_not_rendered() -> None:
    """CommonMark passes the comment through as an HTML comment: browsers show none of it."""
    import re

    from markdown_it import MarkdownIt

    from tests.conftest import ROOT

    text = (ROOT / "posts" / "2024-01-08-my-machine-learning-journey.md").read_text()
    hidden = [s for s in parse("p.md", text).snippets if s.hidden]
    assert len(hidden) == 3  # the model check, the ImageNet call (skipped), the server
    html = MarkdownIt("commonmark").render(text)
    shown = re.sub(r"<!--.*?-->", "", html, flags=re.DOTALL)
    for snippet in hidden:
        assert snippet.code.splitlines()[0] in html
        assert snippet.code.splitlines()[0] not in shown


def test_a_ten_deep_list_hides_no_snippet_after_it() -> None:
    """markdown-it's commonmark preset stops reading at 20 levels of nesting, in silence: a
    snippet after a ten-deep list was lost, and a post with a failing one passed."""
    text = (FIXTURES / "deep_nesting.md").read_text()
    [snippet] = parse("deep.md", text).snippets
    assert snippet.code == 'raise ValueError("hidden")\n'


def test_nesting_past_what_the_runner_reads_is_a_post_error() -> None:
    text = "".join("  " * depth + "- x\n" for depth in range(60)) + "\n```python\n1/0\n```\n"
    with pytest.raises(PostError, match="blocks nest more than 50 deep here") as raised:
        parse("too-deep.md", text)
    assert raised.value.line is not None and 40 < raised.value.line < 60
