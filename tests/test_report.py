"""Reports as CI reads them: JUnit cases for posts, annotations and terminal lines that no
message can turn into a workflow command, and a summary that counts posts and snippets apart."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from runner.model import ErrorInfo, Markers, Output, Part, Region, Snippet, SnippetResult
from runner.report import (
    Bisected,
    PostOutcome,
    Run,
    bisect_summary,
    first_changed_line,
    github_annotations,
    merge,
    step_summary,
    summary_line,
    terminal,
    to_json,
    write_json,
    write_junit,
)
from runner.settle import unified_diff
from tests.conftest import FIXTURES, ROOT

FORGED = "boom\n::error file=x,line=1::forged"
STOP = "::stop-commands::token"
RECORDED = "# Post\n\n```python\nprint(1)\n```\n\n```text runner:output\n1\n```\n\nend\n"


def snippet(path: str, line: int) -> Snippet:
    return Snippet(path, line, "x\n", Markers())


def passed(path: str, line: int, cached: bool = False) -> SnippetResult:
    return SnippetResult(snippet(path, line), "sklearn", "passed", duration_s=0.25,
                         cached=cached)


def failed(path: str, line: int, message: str, post_line: int | None = None) -> SnippetResult:
    return SnippetResult.failed(snippet(path, line), "sklearn", "ValueError", message,
                                post_line, "Traceback\n  raise ValueError\n")


def skipped(path: str, line: int) -> SnippetResult:
    return SnippetResult(snippet(path, line), "sklearn", "skipped", reason="marked runner:skip")


def stale_diff(path: str) -> str:
    return unified_diff(path, RECORDED, RECORDED.replace("\n1\n```", "\n2\n```"))


def mixed_run() -> Run:
    """One post of each status: passed (a cached and a skipped snippet), failed (a message
    that forges a command, then a snippet not run), stale (line 8 differs), error."""
    return Run((
        PostOutcome("posts/a.md", "passed",
                    snippets=(passed("posts/a.md", 3, cached=True), skipped("posts/a.md", 9))),
        PostOutcome("posts/b.md", "failed",
                    snippets=(failed("posts/b.md", 5, FORGED, 6),
                              SnippetResult.not_run(snippet("posts/b.md", 12), "sklearn", 5))),
        PostOutcome("posts/c.md", "stale", diff=stale_diff("posts/c.md"),
                    snippets=(passed("posts/c.md", 3),)),
        PostOutcome("posts/d.md", "error", "invalid YAML front matter", 2),
    ), duration_s=4.2)


def junit(run: Run, tmp_path: Path) -> ET.Element:
    write_junit(run, tmp_path / "j.xml")
    [suite] = ET.parse(tmp_path / "j.xml").getroot()
    return suite


# --- JUnit -------------------------------------------------------------------------------------


def test_junit_has_a_case_per_post_and_counts_them(tmp_path: Path) -> None:
    suite = junit(mixed_run(), tmp_path)
    assert {k: suite.get(k) for k in ("tests", "failures", "errors", "skipped")} == {
        "tests": "9", "failures": "2", "errors": "1", "skipped": "3"}
    posts = {c.get("classname"): c for c in suite if c.get("name") == "post"}
    assert list(posts) == ["posts/a.md", "posts/b.md", "posts/c.md", "posts/d.md"]
    assert list(posts["posts/a.md"]) == []  # passed
    [skip] = posts["posts/b.md"]
    assert skip.tag == "skipped" and "snippet at line 5 failed" in (skip.get("message") or "")
    [stale] = posts["posts/c.md"]
    assert stale.tag == "failure" and stale.text == stale_diff("posts/c.md")
    assert posts["posts/c.md"].get("line") == "8"
    [error] = posts["posts/d.md"]
    assert error.tag == "error" and error.text == "invalid YAML front matter"
    assert error.get("message") == "posts/d.md:2: error: invalid YAML front matter"
    assert posts["posts/d.md"].get("line") == "2"


def test_junit_snippet_cases_are_unchanged(tmp_path: Path) -> None:
    suite = junit(mixed_run(), tmp_path)
    cases = [c for c in suite if c.get("name") != "post"]
    assert [(c.get("classname"), c.get("name"), c.get("file"), c.get("line"), c.get("time"))
            for c in cases][:2] == [("posts/a.md", "posts/a.md:3", "posts/a.md", "3", "0.250"),
                                    ("posts/a.md", "posts/a.md:9", "posts/a.md", "9", "0.000")]
    assert [c.get("line") for c in cases] == ["3", "9", "5", "12", "3"]
    [failure] = cases[2]
    assert failure.tag == "failure" and failure.get("type") == "ValueError"
    assert failure.text == "Traceback\n  raise ValueError\n"
    assert [c[0].tag for c in cases if len(c)] == ["skipped", "failure", "skipped"]


def test_unreadable_posts_alone_make_a_red_test_view(tmp_path: Path) -> None:
    """The run exits 1: the JUnit file must not be an empty, green suite."""
    run = Run((PostOutcome("posts/latin1.md", "error", "not UTF-8: byte 0xe9", 4),
               PostOutcome("posts/fence.md", "error", "unclosed code fence")))
    suite = junit(run, tmp_path)
    assert run.exit_code == 1 and suite.get("tests") == "2" and suite.get("errors") == "2"
    assert [c[0].tag for c in suite] == ["error", "error"]
    assert suite[1].get("line") is None  # no line known: none made up


def test_junit_stays_well_formed_whatever_a_message_holds(tmp_path: Path) -> None:
    run = Run((PostOutcome("posts/x.md", "failed",
                           snippets=(failed("posts/x.md", 1, "nul \x00 esc \x1b lone \ud800"),)),))
    suite = junit(run, tmp_path)  # parses: nothing XML forbids was written
    message = suite[0][0].get("message") or ""
    assert "\\x00" in message and "\\x1b" in message and "\\ud800" in message


# Text a post or a kernel controls, as an attacker writes it: colours that repaint the run,
# OSC 52 (a write to the reader's clipboard), a title, NUL, BEL, a C1 CSI, DEL, bidi controls,
# a tag character, a zero-width space.
HOSTILE = ("red \x1b[31mFAILED\x1b[0m \x1b]52;c;ZXZpbA==\x07 \x1b]0;title\x07 nul \x00 bel \x07 "
           "csi \x9b2J del \x7f rlo \u202e lri \u2066 tag \U000e0041 zw \u200b bom \ufeff")
# What must never be written raw (tab and newline may be)
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060"
                 "\u2066-\u2069\ufeff\U000e0000-\U000e007f]")


def hostile_run() -> Run:
    """Post names, messages, a traceback and a diff with every kind of control in them."""
    name = "posts/\x1b[32mok\x1b[0m.md"
    result = SnippetResult.failed(snippet(name, 3), "sklearn", "ValueError\x1b[2K", HOSTILE, 4,
                                  f"Traceback\n  raise ValueError({HOSTILE!r})\n{HOSTILE}\n")
    diff = unified_diff("posts/s\u202e.md", "a\r\nb\r\n", f"a\r\n{HOSTILE}\r\n")
    return Run((PostOutcome(name, "failed", snippets=(result,)),
                PostOutcome("posts/e\x1b]52;c;eA==\x07.md", "error", HOSTILE, 2),
                PostOutcome("posts/s\u202e.md", "stale", diff=diff,
                            snippets=(passed("posts/s\u202e.md", 1),))))


def test_junit_escapes_every_control_a_post_or_kernel_sent(tmp_path: Path) -> None:
    suite = junit(hostile_run(), tmp_path)  # parses
    texts = [v for case in suite.iter() for v in (*case.attrib.values(), case.text or "")]
    assert texts and all(RAW.search(text) is None for text in texts)
    failure = suite[0][0]
    assert "\\x1b]52;c;ZXZpbA==\\x07" in (failure.get("message") or "")
    assert "\\u202e" in (failure.text or "") and "\\U000e0041" in (failure.text or "")
    stale = suite[4][0].text or ""
    assert "\n-b\n+red \\x1b[31mFAILED" in stale and "\\x0d" not in stale  # CRLF: lines


# --- the terminal ------------------------------------------------------------------------------


def test_no_terminal_line_holds_a_raw_control_from_a_post_or_a_kernel() -> None:
    text = terminal(hostile_run())
    assert RAW.search(text) is None
    assert ("posts/\\x1b[32mok\\x1b[0m.md:4: ValueError\\x1b[2K: red \\x1b[31mFAILED\\x1b[0m "
            "\\x1b]52;c;ZXZpbA==\\x07 \\x1b]0;title\\x07 nul \\x00 bel \\x07 csi \\x9b2J del "
            "\\x7f rlo \\u202e lri \\u2066 tag \\U000e0041 zw \\u200b bom \\ufeff\n") in text
    assert "posts/e\\x1b]52;c;eA==\\x07.md:2: error: red \\x1b[31mFAILED" in text
    assert "\n+red \\x1b[31mFAILED" in text  # a diff's line, as it is
    assert RAW.search(github_annotations(hostile_run())) is None




def forged_run() -> Run:
    diff = unified_diff("posts/s.md", "a\n::warning::in the post\nb\n", "a\n::warning::in "
                        "the post\nc\n") + "figure ##[error]x.png: no longer drawn\n"
    return Run((
        PostOutcome("posts/x.md", "failed", snippets=(failed("posts/x.md", 3, FORGED, 4),
                                                      failed("posts/x.md", 9, STOP))),
        PostOutcome("posts/y.md", "error", FORGED, 7),
        PostOutcome("posts/z.md", "error", STOP),
        PostOutcome("posts/s.md", "stale", diff=diff),
    ))


def test_no_terminal_line_can_be_a_workflow_command() -> None:
    text = terminal(forged_run())
    for line in text.splitlines():
        assert not line.lstrip().startswith("::"), line  # the runner trims leading blanks
        assert "##[" not in line, line  # the legacy form, found anywhere in a line
    assert "posts/x.md:4: ValueError: boom⏎::error file=x,line=1::forged\n" in text
    assert "posts/x.md:9: ValueError: ::stop-commands::token\n" in text
    assert "posts/y.md:7: error: boom⏎::error file=x,line=1::forged\n" in text
    assert "posts/z.md: error: ::stop-commands::token\n" in text
    assert "\n| ::warning::in the post\n" in text  # a diff's context line, marked
    assert "\n-b\n+c\n" in text


def test_terminal_summary_names_posts_and_snippets_apart() -> None:
    line = summary_line(mixed_run())
    assert line == ("4 posts: 1 passed, 1 failed, 1 stale, 1 error; 5 snippets: 2 passed, "
                    "1 failed, 2 skipped (1 cached); 4.2 s")
    assert terminal(mixed_run()).endswith(line + "\n")
    one = Run((PostOutcome("p.md", "error", "bad"),))
    assert summary_line(one) == ("1 post: 0 passed, 0 failed, 0 stale, 1 error; 0 snippets: "
                                 "0 passed, 0 failed, 0 skipped (0 cached); 0.0 s")


# --- GitHub annotations and step summary -------------------------------------------------------


def test_annotations_escape_messages_and_properties() -> None:
    lines = github_annotations(forged_run()).splitlines()
    assert len(lines) == 5  # one per failed snippet and per bad post: nothing split off
    assert all(line.startswith("::error file=posts/") for line in lines)
    assert lines[0] == ("::error file=posts/x.md,line=4::ValueError: "
                        "boom%0A::error file=x,line=1::forged")
    assert lines[2] == "::error file=posts/y.md,line=7::boom%0A::error file=x,line=1::forged"
    odd = Run((PostOutcome("a,b:c%.md", "error", "100% sure\r\n", 3),))
    assert github_annotations(odd) == "::error file=a%2Cb%3Ac%25.md,line=3::100%25 sure%0D%0A\n"


def test_stale_posts_are_annotated_at_their_first_differing_line() -> None:
    lines = github_annotations(mixed_run()).splitlines()
    assert "::error file=posts/c.md,line=8::recorded output is stale: run " \
           "`nox -s update-posts`" in lines
    assert "::error file=posts/d.md,line=2::invalid YAML front matter" in lines


@pytest.mark.parametrize("old, new, line", [
    (RECORDED, RECORDED.replace("\n1\n```", "\n2\n```"), 8),  # a changed line
    ("a\nb\n", "a\nb\nc\n", 3),  # lines added at the end: where they go
    ("", "a\n", 1),  # nothing recorded
    ("a\nb\n", "x\nb\n", 1),  # the first line
    ("".join(f"{n}\n" for n in range(1, 30)), "".join(f"{n}\n" for n in range(1, 30) if n != 20),
     20),  # a line removed far down: the hunk starts with context
])
def test_first_changed_line_from_the_diff(old: str, new: str, line: int) -> None:
    assert first_changed_line(unified_diff("p.md", old, new)) == line


def test_first_changed_line_without_a_hunk_is_the_first() -> None:
    assert first_changed_line("figure posts/x/snippet-1-figure-1.png: no longer drawn\n") == 1
    assert first_changed_line("(the post's text differs from a fresh rendering)\n") == 1


def test_step_summary_shows_posts_and_snippets() -> None:
    run = mixed_run()
    text = step_summary(run)
    assert summary_line(run) in text
    assert "| `posts/d.md` | error | invalid YAML front matter |" in text
    broken = Run((PostOutcome("p.md", "error", "a | b\nc"),))
    assert "| `p.md` | error | a \\| b⏎c |" in step_summary(broken)


MD = MarkdownIt("commonmark").enable("table")  # GFM tables, as GitHub reads a summary


def _cells(text: str) -> list[list[list[tuple[str, str]]]]:
    """Each table row of the Markdown, as its cells' inline tokens (type, content)."""
    rows: list[list[list[tuple[str, str]]]] = []
    cell = False
    for token in MD.parse(text):
        if token.type == "tr_open":
            rows.append([])
        elif token.type in ("th_open", "td_open", "th_close", "td_close"):
            cell = token.type.endswith("open")
        elif token.type == "inline" and cell:
            rows[-1].append([(c.type, c.content) for c in token.children or []])
    return rows


def _shown(tokens: list[tuple[str, str]]) -> str:
    assert {kind for kind, _ in tokens} <= {"text", "text_special"}, tokens  # no HTML, link
    return "".join(content for _, content in tokens)


@pytest.mark.parametrize("name", ["posts/we``ird`.md", "`lead.md", "trail`", "a|b.md",
                                  " spaced .md", "posts/x.md"])
def test_step_summary_cells_hold_whatever_a_name_or_message_holds(name: str) -> None:
    """A backtick in a name cannot end its code span, a `|` cannot end its cell, a newline
    cannot end its row, and a message is text (no HTML, link, code span of its own)."""
    message = "use `x` | y\nz ``` <b>bold</b> [link](http://x) ![i](y) \\| \x1b[31m\u202e"
    run = Run((PostOutcome(name, "error", message, 2),
               PostOutcome(name, "failed", snippets=(failed(name, 1, message),))))
    text = step_summary(run)
    assert RAW.search(text) is None
    _, *rows = _cells(text)
    assert [len(row) for row in rows] == [3, 3] and rows[0][1] == [("text", "error")]
    assert rows[0][0] == [("code_inline", name)]  # the name, exactly, in one code span
    shown = "use `x` | y⏎z ``` <b>bold</b> [link](http://x) ![i](y) \\| \\x1b[31m\\u202e"
    assert _shown(rows[0][2]) == shown
    [failure] = [t for t in MD.parse(text) if t.type == "inline" and t.level == 3]
    assert [(c.type, c.content) for c in failure.children or []] == [
        ("code_inline", f"{name}:1: ValueError: {shown}")]
    found = Bisected(name, "numpy", f"{name}: fails from numpy 2.0 ({message})", found=True)
    [row] = _cells(bisect_summary([found]))[1:]
    assert len(row) == 3 and row[0] == [("code_inline", name)]
    assert _shown(row[1]) == f"{name}: fails from numpy 2.0 ({shown})".strip()  # a cell: trimmed


# --- the JSON report and merged shards ---------------------------------------------------------


def test_json_summary_counts_posts_by_addition() -> None:
    summary = to_json(mixed_run())["summary"]
    assert summary == {"passed": 2, "failed": 1, "skipped": 2, "stale": 1, "cached": 1,
                       "posts": {"passed": 1, "failed": 1, "stale": 1, "error": 1}}


def test_merge_adds_post_counts_and_counts_old_reports() -> None:
    new = json.loads(json.dumps(to_json(mixed_run())))
    old = {"summary": {"passed": 1, "failed": 0, "skipped": 0, "stale": 1, "cached": 0},
           "posts": [{"path": "posts/e.md", "status": "stale"},
                     {"path": "posts/f.md", "status": "error"}],
           "snippets": [{"post": "posts/e.md", "line": 1, "status": "passed"}]}
    merged = merge([old, new])
    assert merged["summary"] == {"passed": 3, "failed": 1, "skipped": 2, "stale": 2,
                                 "cached": 1, "posts": {"passed": 1, "failed": 1, "stale": 2,
                                                        "error": 2}}


# --- end to end, no kernel ---------------------------------------------------------------------


def test_a_run_of_unreadable_and_stale_posts_is_red_in_every_report(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from runner.cli import main

    (tmp_path / "a-yaml.md").write_text("---\ntitle: [unclosed\n---\n\ntext\n")
    (tmp_path / "b-bytes.md").write_bytes(b"# caf\xe9\n")
    (tmp_path / "c-figure.md").write_text("# No code\n")
    (tmp_path / "c-figure").mkdir()
    (tmp_path / "c-figure" / "snippet-1-figure-1.png").write_bytes(b"")  # orphan: stale
    (tmp_path / "d-fine.md").write_text("# Fine\n")
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    monkeypatch.chdir(ROOT)
    code = main(["verify", str(tmp_path), "--report", str(tmp_path / "r.json"),
                 "--junit-xml", str(tmp_path / "j.xml")])
    out = capsys.readouterr().out
    assert code == 1
    assert "4 posts: 1 passed, 0 failed, 1 stale, 2 errors; 0 snippets:" in out
    assert f"::error file={tmp_path}/c-figure.md,line=1::recorded output is stale" in out
    suite = ET.parse(tmp_path / "j.xml").getroot()[0]
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("4", "1", "2")
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["summary"]["posts"] == {"passed": 1, "failed": 0, "stale": 1, "error": 2}
    assert "4 posts: 1 passed" in summary.read_text()


def test_every_format_and_default_ignorable_character_is_shown_as_its_escape() -> None:
    """Variation selectors, Hangul fillers, invisible math operators, the soft hyphen: each
    renders as nothing, so text could hide in them (`token=...` in 13 of them)."""
    import unicodedata

    from runner.visible import visible

    format_characters = [chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) == "Cf"]
    ignorable = ["\ufe0f", "\U000e0100", "\u3164", "\u115f", "\u1160", "\uffa0", "\u034f",
                 "\u17b4", "\u180e", "\u2065", "\ufff0"]
    for character in [*format_characters, *ignorable]:
        shown = visible(f"a{character}b")
        assert character not in shown and shown.startswith("a\\") and shown.endswith("b"), (
            hex(ord(character)))
    assert visible("é, ß, 日本, emoji 🙂, tab\tand newline\n") == (
        "é, ß, 日本, emoji 🙂, tab\tand newline\n")


# --- the JSON report's shape, pinned -----------------------------------------------------------

GOLDEN = FIXTURES / "report" / "every-field.json"


def every_field_run() -> Run:
    """A run whose posts and snippets set every field the JSON report shows (and the fields it
    leaves out: a traceback, output, markers), with text a JSON writer must escape."""
    markers = Markers(skip=None, raises="ValueError", env="sklearn", timeout=5.0,
                      tolerance=0.01, unordered=True, variables=(("A", "1"),))
    code = Snippet("posts/é ü.md", 12, "raise ValueError('x')\n", markers, hidden=True,
                   anchor=15, prefix="> ", output=Region(16, 19), start=11)
    failing = SnippetResult(code, "sklearn", "failed",
                            Output("out\n", "err\n", (Part("image", "<Figure>", png=b"\x89PNG"),)),
                            ErrorInfo("ValueError", "bad \"value\"\t\x1b[31m ⏎ \ud800", 13,
                                      "Traceback\n  raise ValueError\n"),
                            duration_s=1.23456, cached=True)
    later = SnippetResult.not_run(Snippet("posts/é ü.md", 20, "print(2)\n", Markers()),
                                  "sklearn", 12)
    return Run((
        PostOutcome("posts/é ü.md", "failed", snippets=(failing, later),
                    parameters=(("N", "10"), ("name", "ü")), stamp_stale=True),
        PostOutcome("posts/bad.md", "error", "invalid YAML front matter: 'x'", 2),
    ), duration_s=9.87654)


def test_the_json_report_is_byte_for_byte_its_golden_file(tmp_path: Path) -> None:
    """Any drift of the public report (a key renamed, added, reordered, a value's form) fails
    here: the golden file changes only on purpose, with CONTRACT.md."""
    write_json(every_field_run(), tmp_path / "report.json")
    assert (tmp_path / "report.json").read_bytes() == GOLDEN.read_bytes()
