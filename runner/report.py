"""Outcomes -> what people and tools read: terminal lines, the JSON report, JUnit XML."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from runner.errors import UsageError
from runner.model import SnippetResult
from runner.posts import Fresh

PostStatus = Literal["passed", "failed", "stale", "error"]
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


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


@dataclass(frozen=True)
class Run:
    posts: tuple[PostOutcome, ...]
    duration_s: float = 0.0

    @property
    def snippets(self) -> tuple[SnippetResult, ...]:
        return tuple(r for post in self.posts for r in post.snippets)

    def summary(self) -> dict[str, int]:
        count = [r.status for r in self.snippets].count
        return {"passed": count("passed"), "failed": count("failed"),
                "skipped": count("skipped"),
                "stale": [p.status for p in self.posts].count("stale"),
                "cached": sum(r.cached for r in self.snippets)}

    @property
    def exit_code(self) -> int:
        return exit_code([p.status for p in self.posts], [r.status for r in self.snippets])


def exit_code(post_statuses: Sequence[str], snippet_statuses: Sequence[str]) -> int:
    """The one rule: 0 when every post passed and no snippet failed, else 1. A report merged
    from shards is judged by it too."""
    bad = any(s != "passed" for s in post_statuses) or "failed" in snippet_statuses
    return EXIT_FAILED if bad else EXIT_OK


def snippet_line(result: SnippetResult) -> str | None:
    """One terminal line for a snippet worth a line: `posts/x.md:135: NameError: ...`."""
    s = result.snippet
    if result.status == "failed" and result.error is not None:
        line = result.error.post_line or s.line
        return f"{s.path}:{line}: {result.error.type}: {result.error.message}"
    if result.status == "skipped":
        return f"{s.path}:{s.line}: skipped: {result.reason}"
    return None


def post_line(post: PostOutcome) -> str:
    if post.status == "error":
        where = post.path if post.error_line is None else f"{post.path}:{post.error_line}"
        return f"{where}: error: {post.error}"
    if post.status == "stale":
        return f"{post.path}: stale: recorded output differs from a fresh run"
    if post.parameters:
        shown = ", ".join(f"{n}={v}" for n, v in post.parameters)
        return f"{post.path}: {post.status} (parameters {shown}: output not compared)"
    return f"{post.path}: {post.status}" + (" (output written)" if post.written else "")


def terminal(run: Run) -> str:
    by_post: dict[str, list[SnippetResult]] = {}
    for result in run.snippets:
        by_post.setdefault(result.snippet.path, []).append(result)
    lines: list[str] = []
    for post in run.posts:
        lines += [text for r in by_post.get(post.path, []) if (text := snippet_line(r))]
        lines.append(post_line(post))
        if post.diff:
            lines.append(post.diff.rstrip("\n"))
    totals = run.summary()
    lines.append(", ".join(f"{n} {k}" for k, n in totals.items())
                 + f" in {len(run.posts)} posts, {run.duration_s:.1f} s")
    return "\n".join(lines) + "\n"


def to_json(run: Run) -> dict[str, Any]:
    return {
        "summary": run.summary(),
        "posts": [_post_json(p) for p in run.posts],
        "snippets": [_snippet_json(r) for r in run.snippets],
    }


def _post_json(post: PostOutcome) -> dict[str, Any]:
    data: dict[str, Any] = {"path": post.path, "status": post.status, "error": post.error,
                            "error_line": post.error_line}
    if post.parameters:  # only on runs that override parameters
        data["parameters"] = dict(post.parameters)
    return data


def _snippet_json(result: SnippetResult) -> dict[str, Any]:
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


def write_junit(results: Sequence[SnippetResult], path: Path) -> None:
    """One testcase per snippet, with the post's file and the fence's line."""
    root = ET.Element("testsuites")
    suite = ET.SubElement(root, "testsuite", name="runner", tests=str(len(results)),
                       failures=str(sum(r.status == "failed" for r in results)),
                       skipped=str(sum(r.status == "skipped" for r in results)))
    for result in results:
        s = result.snippet
        case = ET.SubElement(suite, "testcase", classname=s.path, name=f"{s.path}:{s.line}",
                             file=s.path, line=str(s.line), time=f"{result.duration_s:.3f}")
        if result.status == "failed" and result.error is not None:
            failure = ET.SubElement(case, "failure", type=result.error.type,
                                    message=snippet_line(result) or result.error.message)
            failure.text = result.error.traceback
        elif result.status == "skipped":
            ET.SubElement(case, "skipped", message=result.reason or "")
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def merge(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """N shard reports -> one: posts and snippets together, in path and line order, and the
    summary added up."""
    posts = sorted((p for r in reports for p in r["posts"]), key=lambda p: p["path"])
    snippets = sorted((s for r in reports for s in r["snippets"]),
                      key=lambda s: (s["post"], s["line"]))
    keys = ("passed", "failed", "skipped", "stale", "cached")
    summary = {k: sum(r["summary"].get(k, 0) for r in reports) for k in keys}
    return {"summary": summary, "posts": posts, "snippets": snippets}


def merge_files(paths: Sequence[Path]) -> dict[str, Any]:
    """`report merge`: the JSON reports in these files, merged; a missing or malformed one is
    a UsageError (the command was given a wrong file)."""
    try:
        return merge([json.loads(path.read_text(encoding="utf-8")) for path in paths])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise UsageError(f"cannot merge the reports: {why}",
                         getattr(exc, "filename", None)) from exc


def merged_exit_code(merged: dict[str, Any]) -> int:
    return exit_code([p["status"] for p in merged["posts"]],
                     [s["status"] for s in merged["snippets"]])


def github_annotations(run: Run) -> str:
    """`::error file=...,line=...::` lines GitHub Actions turns into annotations on the diff."""
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
            lines.append(_annotation(post.path, 1, "recorded output is stale: run "
                                     "`nox -s update-posts`"))
    return "".join(line + "\n" for line in lines)


def _annotation(path: str, line: int, message: str) -> str:
    escaped = message.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return f"::error file={path},line={line}::{escaped}"


def step_summary(run: Run) -> str:
    """A Markdown summary for $GITHUB_STEP_SUMMARY: totals, then a row per post."""
    totals = run.summary()
    rows = [f"| `{p.path}` | {p.status} | {p.error or ''} |" for p in run.posts]
    failures = [f"- `{text}`" for r in run.snippets if (text := snippet_line(r))
                and r.status == "failed"]
    return "\n".join([
        "## Posts verified by the runner", "",
        ", ".join(f"**{n}** {k}" for k, n in totals.items()), "",
        "| post | status | error |", "|---|---|---|", *rows, "",
        *(["### Failures", "", *failures, ""] if failures else []),
    ]) + "\n"
