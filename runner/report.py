"""Outcomes -> what people and tools read: terminal lines, the JSON report, JUnit XML.

Text from posts and snippets (messages, paths, output) is data: on a terminal it never starts a
line that a CI runner reads as a command, nor holds a control character that acts (colours, a
title, a clipboard write: `runner.visible`); in XML it is always well formed; in the step
summary's Markdown it stays in its code span, cell and row."""

from __future__ import annotations

import json
import math
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypedDict

from runner.atomic import read_regular
from runner.errors import EXIT_FAILED, EXIT_OK, UsageError
from runner.model import SnippetResult
from runner.posts import Fresh
from runner.visible import visible
from runner.writeback import table_cell

PostStatus = Literal["passed", "failed", "stale", "error"]
POST_STATUSES: tuple[PostStatus, ...] = ("passed", "failed", "stale", "error")
STALE = "recorded output is stale: run `nox -s update-posts`"


class PostCounts(TypedDict):
    passed: int
    failed: int
    stale: int
    error: int


class Summary(TypedDict):
    """The JSON report's `summary`: snippets by status, stale posts, cache hits, and (added)
    posts by status."""

    passed: int
    failed: int
    skipped: int
    stale: int
    cached: int
    posts: PostCounts


@dataclass(frozen=True)
class PostOutcome:
    """One post at the end of a run: its status, its snippets' results, and (when they all
    passed) the post as the fresh run renders it."""

    path: str
    status: PostStatus
    error: str | None = None
    error_line: int | None = None
    diff: str = ""  # recorded vs fresh output, for a stale post
    written: bool = False  # update wrote new output into the post
    parameters: tuple[tuple[str, str], ...] = ()  # overridden for this run: not compared
    snippets: tuple[SnippetResult, ...] = ()  # in post order
    fresh: Fresh | None = None  # text and figures as rendered from this run's output
    stamp_stale: bool = False  # passed, but its `verified_by` stamp is not this run's locks'
    # (verify with ignore_stamp: a re-lock changed a lock hash, no output changed)


@dataclass(frozen=True)
class Run:
    posts: tuple[PostOutcome, ...]
    duration_s: float = 0.0

    @property
    def snippets(self) -> tuple[SnippetResult, ...]:
        return tuple(r for post in self.posts for r in post.snippets)

    def summary(self) -> Summary:
        count = [r.status for r in self.snippets].count
        posts = post_counts([p.status for p in self.posts])
        return {"passed": count("passed"), "failed": count("failed"),
                "skipped": count("skipped"), "stale": posts["stale"],
                "cached": sum(r.cached for r in self.snippets), "posts": posts}

    @property
    def exit_code(self) -> int:
        return exit_code([p.status for p in self.posts], [r.status for r in self.snippets])


def post_counts(statuses: Sequence[str]) -> PostCounts:
    count = list(statuses).count
    return {"passed": count("passed"), "failed": count("failed"), "stale": count("stale"),
            "error": count("error")}


def exit_code(post_statuses: Sequence[str], snippet_statuses: Sequence[str]) -> int:
    """The one rule: 0 when every post passed and no snippet failed, else 1. A report merged
    from shards is judged by it too."""
    bad = any(s != "passed" for s in post_statuses) or "failed" in snippet_statuses
    return EXIT_FAILED if bad else EXIT_OK


# --- text that is safe to print ----------------------------------------------------------------


def one_line(text: str) -> str:
    """A message on one line, as it is: its line breaks (every kind Python splits at) shown as
    `⏎`, every other control or invisible character as its escape (`runner.visible`)."""
    return visible("⏎".join(text.splitlines()))


def inert(line: str) -> str:
    """A terminal line no GitHub runner reads as a workflow command. The runner takes a line
    that starts with `::` once leading blanks are trimmed, and `##[` anywhere in a line (the
    legacy form): such a line gets a `|` in front, and `##[` becomes `#|#[`."""
    line = line.replace("##[", "#|#[")
    return "|" + line if line.lstrip().startswith("::") else line


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


# --- the terminal ------------------------------------------------------------------------------


def snippet_line(result: SnippetResult) -> str | None:
    """One terminal line for a snippet worth a line: `posts/x.md:135: NameError: ...`."""
    s = result.snippet
    if result.status == "failed" and result.error is not None:
        line = result.error.post_line or s.line
        return one_line(f"{s.path}:{line}: {result.error.type}: {result.error.message}")
    if result.status == "skipped":
        return one_line(f"{s.path}:{s.line}: skipped: {result.reason}")
    return None


def post_line(post: PostOutcome) -> str:
    if post.status == "error":
        where = post.path if post.error_line is None else f"{post.path}:{post.error_line}"
        return one_line(f"{where}: error: {post.error}")
    if post.status == "stale":
        return one_line(f"{post.path}: stale: recorded output differs from a fresh run")
    if post.parameters:
        shown = ", ".join(f"{n}={v}" for n, v in post.parameters)
        return one_line(f"{post.path}: {post.status} (parameters {shown}: output not compared)")
    if post.stamp_stale:
        return one_line(f"{post.path}: {post.status} (output unchanged; only its verified_by "
                        "stamp names other locks)")
    return one_line(f"{post.path}: {post.status}" + (" (output written)" if post.written else ""))


def summary_line(run: Run) -> str:
    """`3 posts: 1 passed, 1 failed, 1 stale, 0 errors; 12 snippets: 9 passed, 1 failed,
    2 skipped (0 cached); 4.2 s`."""
    totals = run.summary()
    posts = totals["posts"]
    return (f"{_plural(len(run.posts), 'post')}: {posts['passed']} passed, "
            f"{posts['failed']} failed, {posts['stale']} stale, "
            f"{_plural(posts['error'], 'error')}; {_plural(len(run.snippets), 'snippet')}: "
            f"{totals['passed']} passed, {totals['failed']} failed, {totals['skipped']} skipped "
            f"({totals['cached']} cached); {run.duration_s:.1f} s")


def terminal(run: Run) -> str:
    by_post: dict[str, list[SnippetResult]] = {}
    for result in run.snippets:
        by_post.setdefault(result.snippet.path, []).append(result)
    lines: list[str] = []
    for post in run.posts:
        lines += [text for r in by_post.get(post.path, []) if (text := snippet_line(r))]
        lines.append(post_line(post))
        if post.diff:
            lines += [visible(line) for line in post.diff.splitlines()]
    lines.append(summary_line(run))
    return "".join(inert(line) + "\n" for line in lines)


# --- the JSON report ---------------------------------------------------------------------------
#
# A view, not a store: its shape is the runner's outside contract (../shared/CONTRACT.md, as the
# README says; pinned byte for byte by tests/fixtures/report/every-field.json), not
# `runner.codec`'s, by which the cache and the verdicts keep whole results. It shows what CI
# reads and no more: a snippet by its post and fence line, its duration rounded, its error
# without the traceback; no output, no markers. So each key is named here, once, and a field
# added to the model reaches the report only when it is added here (and to the contract).


def to_json(run: Run) -> dict[str, Any]:
    """The JSON report (`--report FILE`): the whole view of a run."""
    return {
        "summary": run.summary(),
        "posts": [_post_json(p) for p in run.posts],
        "snippets": [_snippet_json(r) for r in run.snippets],
    }


def _post_json(post: PostOutcome) -> dict[str, Any]:
    """A post in the report: `path`, `status`, `error`, `error_line`; `parameters` and
    `stamp_stale` (added) only where they apply."""
    data: dict[str, Any] = {"path": post.path, "status": post.status, "error": post.error,
                            "error_line": post.error_line}
    if post.parameters:  # only on runs that override parameters
        data["parameters"] = dict(post.parameters)
    if post.stamp_stale:  # only on runs that ignore stamps (--ignore-stamps)
        data["stamp_stale"] = True
    return data


def _snippet_json(result: SnippetResult) -> dict[str, Any]:
    """A snippet in the report: `post`, `line`, `env`, `status`, `cached`, `duration_s` (to
    the ms), `error` (`type`, `message`, `post_line`; null when none), `reason` (added)."""
    error = result.error
    return {
        "post": result.snippet.path, "line": result.snippet.line, "env": result.env,
        "status": result.status, "cached": result.cached, "duration_s": round(result.duration_s, 3),
        "error": None if error is None else {"type": error.type, "message": error.message,
                                             "post_line": error.post_line},
        "reason": result.reason,
    }


def write_json(run: Run, path: Path) -> None:
    path.write_text(json.dumps(to_json(run), indent=2) + "\n", encoding="utf-8")


# --- JUnit XML ---------------------------------------------------------------------------------

HUNK = re.compile(r"@@ -(\d+)(?:,(\d+))? ")  # a unified diff's hunk header, recorded side
# What XML 1.0 does not allow in a document, even escaped, and `visible` leaves as it is:
# surrogates (they cannot be UTF-8 either), U+FFFE and U+FFFF.
NOT_XML = re.compile("[\ud800-\udfff\ufffe\uffff]")


def _xml(text: str) -> str:
    """Text as XML 1.0 allows it and a test viewer shows it as it is: CRLF a newline, every
    other control (C0, DEL, C1) and invisible character, and what XML forbids, escaped."""
    return NOT_XML.sub(lambda m: f"\\u{ord(m[0]):04x}", visible(text.replace("\r\n", "\n")))


def write_junit(run: Run, path: Path) -> None:
    """A testcase per snippet, with the post's file and the fence's line, then one per post
    (`post`): a failure when stale (the diff), an error when it could not be read or written,
    skipped when a snippet failed (its output was not compared), else passed."""
    snippets, posts = run.snippets, [p.status for p in run.posts]
    root = ET.Element("testsuites")
    suite = ET.SubElement(
        root, "testsuite", name="runner", tests=str(len(snippets) + len(posts)),
        failures=str(sum(r.status == "failed" for r in snippets) + posts.count("stale")),
        errors=str(posts.count("error")),
        skipped=str(sum(r.status == "skipped" for r in snippets) + posts.count("failed")))
    for post in run.posts:
        for result in post.snippets:
            _snippet_case(suite, result)
        _post_case(suite, post)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def _snippet_case(suite: ET.Element, result: SnippetResult) -> None:
    s = result.snippet
    case = ET.SubElement(suite, "testcase", classname=_xml(s.path),
                         name=_xml(f"{s.path}:{s.line}"), file=_xml(s.path), line=str(s.line),
                         time=f"{result.duration_s:.3f}")
    if result.status == "failed" and result.error is not None:
        failure = ET.SubElement(case, "failure", type=_xml(result.error.type),
                                message=_xml(snippet_line(result) or result.error.message))
        failure.text = _xml(result.error.traceback)
    elif result.status == "skipped":
        ET.SubElement(case, "skipped", message=_xml(result.reason or ""))


def _post_case(suite: ET.Element, post: PostOutcome) -> None:
    case = ET.SubElement(suite, "testcase", classname=_xml(post.path), name="post",
                         file=_xml(post.path))
    if post.status == "stale":
        case.set("line", str(first_changed_line(post.diff)))
        failure = ET.SubElement(case, "failure", type="stale", message=_xml(post_line(post)))
        failure.text = _xml(post.diff)
    elif post.status == "error":
        if post.error_line is not None:
            case.set("line", str(post.error_line))
        error = ET.SubElement(case, "error", type="error", message=_xml(post_line(post)))
        error.text = _xml(post.error or "")
    elif post.status == "failed":
        failed = [r.snippet.line for r in post.snippets if r.status == "failed"]
        where = f"the snippet at line {failed[0]}" if failed else "a snippet"
        ET.SubElement(case, "skipped", message=f"output not compared: {where} failed")


def first_changed_line(diff: str) -> int:
    """The recorded post's line where a stale post's diff first differs (its first hunk's
    `@@ -L,N` plus the context lines before the first change); 1 when the diff has no hunk
    (only figures changed, or only the final newline)."""
    lines = diff.splitlines()
    for n, header in enumerate(lines):
        if (hunk := HUNK.match(header)) is None:
            continue
        line = int(hunk[1]) + (hunk[2] == "0")  # an empty side names the line before
        for body in lines[n + 1:]:
            if body.startswith(("-", "+")):
                break
            line += body.startswith(" ")
        return max(line, 1)
    return 1


# --- shards ------------------------------------------------------------------------------------


def merge(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """N shard reports -> one: posts and snippets together, in path and line order, and the
    summary added up (a report from before `summary.posts` has its posts counted)."""
    posts = sorted((p for r in reports for p in r["posts"]), key=lambda p: p["path"])
    snippets = sorted((s for r in reports for s in r["snippets"]),
                      key=lambda s: (s["post"], s["line"]))
    keys = ("passed", "failed", "skipped", "stale", "cached")
    summary: dict[str, Any] = {k: sum(r["summary"].get(k, 0) for r in reports) for k in keys}
    counts = [r["summary"].get("posts") or post_counts([p["status"] for p in r["posts"]])
              for r in reports]
    summary["posts"] = {k: sum(c.get(k, 0) for c in counts) for k in POST_STATUSES}
    return {"summary": summary, "posts": posts, "snippets": snippets}


def merge_files(paths: Sequence[Path]) -> dict[str, Any]:
    """`report merge`: the JSON reports in these files, merged; a missing or malformed one is
    a UsageError (the command was given a wrong file)."""
    try:
        return merge([json.loads(path.read_text(encoding="utf-8")) for path in paths])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise UsageError(f"cannot merge the reports: {why}",
                         getattr(exc, "filename", None)) from exc


MAX_REPORT_BYTES = 256 * 2**20  # a report read back for its durations


def post_key(path: str | Path) -> str:
    """A post's path as durations are matched: absolute from the current folder, normalised,
    `/`-separated; so `posts/x.md`, `./posts/x.md` and its absolute path are one post."""
    return Path(os.path.abspath(path)).as_posix()


def read_durations(path: Path) -> dict[tuple[str, int], float]:
    """(post, fence line) -> seconds, from the JSON report of an earlier run (one shard's or
    one merged by `report merge`), for `--shard` to balance by time. A snippet that did not
    run (skipped) is left out: its cost is unknown, not 0. A cached snippet counts: its
    `duration_s` is the one measured when its result was stored. Raises OSError, or
    ValueError when the file is not such a report."""
    data = json.loads(read_regular(path, MAX_REPORT_BYTES).decode("utf-8"))
    durations: dict[tuple[str, int], float] = {}
    try:
        for snippet in data["snippets"]:
            seconds = float(snippet["duration_s"])
            if snippet["status"] != "skipped" and 0 <= seconds < math.inf:
                durations[post_key(snippet["post"]), int(snippet["line"])] = seconds
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a JSON report of the runner ({type(exc).__name__}: {exc})") from exc
    return durations


def merged_exit_code(merged: dict[str, Any]) -> int:
    return exit_code([p["status"] for p in merged["posts"]],
                     [s["status"] for s in merged["snippets"]])


# --- bisect ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bisected:
    """What `bisect` found for one post: the first release from which its outcome is the
    newer one (`found`), or why there is none; and what finding it cost."""

    post: str
    env: str
    answer: str  # the one line a maintainer acts on
    found: bool = False
    package: str | None = None
    good: str | None = None  # the last release with the older outcome ("1.23.5")
    bad: str | None = None  # the first release with the newer outcome ("1.24.0")
    good_outcome: str | None = None  # passed, failed or stale ("prints other output")
    bad_outcome: str | None = None
    error: dict[str, Any] | None = None  # the newer outcome's failure: type, message, post_line
    line: int | None = None  # the post line to annotate
    envs_built: int = 0  # candidate envs built by uv for this bisect
    envs_reused: int = 0  # found built in the env cache
    seconds: float = 0.0
    skipped: tuple[tuple[str, str], ...] = ()  # (candidate, why it could not be tried)


def bisect_json(results: Sequence[Bisected]) -> list[dict[str, Any]]:
    """The JSON report's `bisect` entries (added): one per post bisected."""
    return [{"post": b.post, "env": b.env, "found": b.found, "package": b.package,
             "good": b.good, "bad": b.bad, "good_outcome": b.good_outcome,
             "bad_outcome": b.bad_outcome, "error": b.error, "line": b.line,
             "answer": b.answer, "envs_built": b.envs_built, "envs_reused": b.envs_reused,
             "seconds": round(b.seconds, 1),
             "skipped": [{"candidate": c, "reason": r} for c, r in b.skipped]}
            for b in results]


def bisect_cost(b: Bisected) -> str:
    """`3 envs built, 2 reused, 41.2 s`."""
    return f"{_plural(b.envs_built, 'env')} built, {b.envs_reused} reused, {b.seconds:.1f} s"


def bisect_annotations(results: Sequence[Bisected]) -> str:
    """One `::error` per post whose culprit was found, at the failing line; a `::warning` at
    the post's first line where none was."""
    lines = [_annotation(b.post, b.line or 1, f"bisect: {b.answer}") if b.found
             else _annotation(b.post, b.line or 1, f"bisect: {b.answer}").replace(
                 "::error ", "::warning ", 1)
             for b in results]
    return "".join(line + "\n" for line in lines)


def bisect_summary(results: Sequence[Bisected]) -> str:
    """Markdown for $GITHUB_STEP_SUMMARY: which release broke each post, and the cost."""
    rows = [f"| {_code_cell(b.post)} | {_text_cell(b.answer)} | {_text_cell(bisect_cost(b))} |"
            for b in results]
    return "\n".join(["## Which release changed each post (bisect)", "",
                      "| post | answer | cost |", "|---|---|---|", *rows, ""]) + "\n"


# --- GitHub Actions ----------------------------------------------------------------------------


def github_annotations(run: Run) -> str:
    """`::error file=...,line=...::` lines GitHub Actions turns into annotations on the diff:
    failed snippets at the raising line, post errors at theirs, stale posts at their first
    differing line."""
    lines = []
    for result in run.snippets:
        if result.status == "failed" and result.error is not None:
            line = result.error.post_line or result.snippet.line
            lines.append(_annotation(result.snippet.path, line,
                                     f"{result.error.type}: {result.error.message}"))
    for post in run.posts:
        if post.status == "error":
            lines.append(_annotation(post.path, post.error_line or 1, post.error or "error"))
        elif post.status == "stale":
            lines.append(_annotation(post.path, first_changed_line(post.diff), STALE))
    return "".join(line + "\n" for line in lines)


def _annotation(path: str, line: int, message: str) -> str:
    """Escaped as the runner unescapes: `%`, CR and LF in the message; those and `:` and `,`
    in a property, so neither can end the command early or start another line; other controls
    as `visible` shows them."""
    return f"::error file={visible(_escape(path, ':,'))},line={line}::{visible(_escape(message))}"


def _escape(text: str, also: str = "") -> str:
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    for char in also:
        text = text.replace(char, f"%{ord(char):02X}")
    return text


def step_summary(run: Run) -> str:
    """A Markdown summary for $GITHUB_STEP_SUMMARY: totals, then a row per post."""
    rows = [f"| {_code_cell(p.path)} | {p.status}{' (stamp only)' if p.stamp_stale else ''} | "
            f"{_text_cell(p.error or '')} |" for p in run.posts]
    failures = [f"- {code_span(text)}" for r in run.snippets if (text := snippet_line(r))
                and r.status == "failed"]
    return "\n".join([
        "## Posts verified by the runner", "", summary_line(run), "",
        "| post | status | error |", "|---|---|---|", *rows, "",
        *(["### Failures", "", *failures, ""] if failures else []),
    ]) + "\n"


def code_span(text: str) -> str:
    """`text` as one CommonMark code span that shows it exactly: between backtick runs longer
    than any inside it, with a space at each end (which a reader strips) where it starts or
    ends with a backtick or a space."""
    fence = "`" * (max(map(len, re.findall("`+", text)), default=0) + 1)
    pad = " " if text[:1] in ("`", " ") or text[-1:] in ("`", " ") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _code_cell(text: str) -> str:
    """A GFM table cell of `text` as code, on one line; `|` escaped (a table row is split on
    its pipes before code spans are read, and a cell's `\\|` is a `|` in its code span)."""
    return code_span(one_line(text)).replace("|", "\\|")


def _text_cell(text: str) -> str:
    """A GFM table cell of `text` as text, on one line: no HTML, link, image or code span."""
    return table_cell(one_line(text))
