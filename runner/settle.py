"""A post's results -> its outcome: failed, or compared with a fresh rendering (verify) and
written when it differs (update). Pure but for reading the post again and the one atomic write
(`posts.freshen`, `posts.write_fresh`). Also what a result is made to say before: a NameError
in a post split over envs (`explain_split`), and `--check-determinism`'s comparison of two runs.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from runner import compare, images, markdown, plan, posts
from runner.config import Config
from runner.errors import PostError, RunnerError
from runner.markdown import split_lines
from runner.model import ErrorInfo, ErrorKind, Output, Post, Session, Snippet, SnippetResult
from runner.options import Mode
from runner.portable import moved
from runner.posts import Fresh
from runner.report import PostOutcome, post_key
from runner.writeback import (
    RenderOptions,
    output_block,
    snippet_figure_links,
    stamp,
    stamp_value,
)

SESSION_START_S = 0.2  # a kernel's start and stop, in no snippet's duration (for shards)
POST_S = 0.01  # reading, planning and settling a post (for shards)


@dataclass(frozen=True)
class Planned:
    """A post read and planned: its sessions, or the error that stopped it."""

    path: Path
    post: Post | None = None
    sessions: tuple[Session, ...] = ()
    error: PostError | None = None
    replayed: PostOutcome | None = None  # its verdict: passed before, nothing changed since

    def runnable(self) -> list[tuple[str, Snippet]]:
        """(env, snippet) of each snippet that runs (not `runner:skip`), planned or replayed."""
        if self.replayed is not None:
            return [(r.env, r.snippet) for r in self.replayed.snippets
                    if r.snippet.markers.skip is None]
        return [(session.env, s) for session in self.sessions for s in session.snippets
                if s.markers.skip is None]

    @property
    def weight(self) -> int:
        """What a shard balances: the post's runnable snippets (and the post itself)."""
        return 1 + len(self.runnable())

    def seconds(self, durations: Mapping[tuple[str, int], float], average: float) -> float:
        """What a shard balances by time: each session's start, and each runnable snippet's
        duration in `durations` (keyed by `report.post_key` and fence line), else `average`."""
        key, runnable = post_key(self.path), self.runnable()
        return (POST_S + SESSION_START_S * len({env for env, _ in runnable})
                + sum(durations.get((key, s.line), average) for _, s in runnable))



def settle(item: Planned, results: tuple[SnippetResult, ...], config: Config, mode: Mode,
           options: RenderOptions, ignore_stamp: bool = False) -> PostOutcome:
    """A post's outcome from its results: failed, or compared with a fresh rendering (verify)
    and written when it differs (update). A post whose bytes on disk are no longer those
    parsed at the start is an error, never passed nor stale: its results may not be its
    own (update: `posts.replace` refuses to write it, under its lock). `ignore_stamp` (verify):
    the recorded post is compared as if it had the fresh stamp; a stamp that differs is
    `stamp_stale`, not stale."""
    path = str(item.path)
    if item.error is not None or item.post is None:
        error = item.error or PostError("not parsed", path)
        return PostOutcome(path, "error", error.message, error.line)
    given = item.sessions[0].overrides if item.sessions else ()
    if any(r.status == "failed" for r in results):
        return PostOutcome(path, "failed", parameters=given, snippets=results)
    if given:  # a run with other parameters prints other output: neither compared nor written
        return (_changed_on_disk(item.path, item.post.text, results)
                or PostOutcome(path, "passed", parameters=given, snippets=results))
    verified_by = stamp_value(item.sessions, config.envs)
    fresh = _fresh(item, item.post, results, verified_by, options)
    if isinstance(fresh, PostOutcome):
        return fresh
    recorded = item.post.text
    if ignore_stamp and mode == "verify":
        recorded = stamp(item.post.text, verified_by)  # as if it had the fresh stamp
    done = PostOutcome(path, "passed", snippets=results, fresh=fresh,
                       stamp_stale=recorded != item.post.text)
    if not fresh.differs(recorded):
        return _changed_on_disk(item.path, item.post.text, results) or done
    if mode == "verify":
        stale = replace(done, status="stale",
                        diff=unified_diff(path, recorded, fresh.text) + fresh.notes())
        return _changed_on_disk(item.path, item.post.text, results) or stale
    try:
        posts.write_fresh(item.path, item.post.text, fresh)
    except RunnerError as exc:
        return replace(done, status="error", error=exc.message, error_line=exc.line)
    except OSError as exc:
        return replace(done, status="error", error=f"cannot write: {exc.strerror or exc}")
    return replace(done, written=True)


def _fresh(item: Planned, post: Post, results: tuple[SnippetResult, ...], verified_by: str,
           options: RenderOptions) -> Fresh | PostOutcome:
    """The post as it should be, with its passed snippets' output and the stamp
    `verified_by`; an error outcome where the stamp would not read back or a figure cannot
    be written."""
    path = str(item.path)
    outputs: dict[int, Output] = {r.snippet.line: r.output for r in results
                                  if r.status == "passed"}
    stamped = stamp(post.text, verified_by)
    forged = _stamp_misread(path, stamped, verified_by)
    if forged is not None:
        return PostOutcome(path, "error", forged[0], forged[1], snippets=results)
    gained = len(split_lines(stamped)) - len(split_lines(post.text))
    if gained:  # a first stamp: every snippet moves down, and the lines its output names
        outputs = {line: moved(output, item.sessions[0].post, gained)
                   for line, output in outputs.items()}
    try:
        return posts.freshen(item.path, post, outputs, verified_by, options)
    except PostError as exc:  # a figure folder or figure that is a symlink
        return PostOutcome(path, "error", exc.message, exc.line, snippets=results)


def _stamp_misread(path: str, stamped: str, value: str) -> tuple[str, int | None] | None:
    """Why the stamp, written where `stamp` writes it (the first line that starts with
    `verified_by:`), is not what YAML reads as the post's `verified_by` (such a line inside a
    multi-line value, and the key itself further down: a site would show that one), with the
    line; None when it is (or the post has no front matter: no stamp is written)."""
    if not value or not markdown.body_start(split_lines(stamped)):
        return None
    try:
        read = markdown.front_matter(path, stamped).get("verified_by")
    except PostError as exc:
        return f"front matter: the verified_by stamp breaks it: {exc.message}", exc.line
    if read == value:
        return None
    line = next((number for number, text in enumerate(split_lines(stamped), 1)
                 if text.startswith("verified_by:")), None)
    return ("front matter: YAML does not read the verified_by stamp where the runner writes it "
            "(a line starting `verified_by:` inside another value?): make `verified_by` a "
            "top-level key of its own line"), line


def _changed_on_disk(path: Path, parsed: str,
                     results: tuple[SnippetResult, ...]) -> PostOutcome | None:
    """An error outcome when the post on disk is no longer the text parsed at the start (or
    can no longer be read); None when it is unchanged."""
    try:
        unchanged = posts.read(path) == parsed
    except PostError as exc:
        return PostOutcome(str(path), "error", exc.message, exc.line, snippets=results)
    if unchanged:
        return None
    return PostOutcome(str(path), "error", "changed on disk during the run: run again",
                       snippets=results)


def explain_split(post: Post, sessions: tuple[Session, ...],
                  result: SnippetResult) -> SnippetResult:
    """A NameError in a post split over envs names where the name was defined, and why the
    post was split: the name lives in another kernel."""
    error = result.error
    found = re.match(r"name '(\w+)' is not defined", error.message) if error else None
    if error is None or found is None or not any(s.split for s in sessions):
        return result
    place = plan.defined_elsewhere(post, sessions, found[1], result.snippet.line)
    if place is None:
        return result
    split = next(s.split for s in sessions if s.split)
    message = (f"{error.message} here; it is defined at line {place[0]}, which runs in env "
               f"'{place[1]}': {split}")
    return replace(result, error=replace(error, message=message))


def check_determinism(post: Post, first: Sequence[SnippetResult],
                      second: Sequence[SnippetResult],
                      options: RenderOptions) -> list[SnippetResult]:
    """A snippet whose output differs between two runs of the same code fails, with the lines
    (the blocks as the post would record them, figure links included) or, where only pixels
    differ, what differs in which figure. Results are paired by fence line (sessions end in
    any order)."""
    again = {r.snippet.line: r for r in second}
    return [_compare_runs(post, a, again[a.snippet.line], options) for a in
            sorted(first, key=lambda r: r.snippet.line)]


def _compare_runs(post: Post, a: SnippetResult, b: SnippetResult,
                  options: RenderOptions) -> SnippetResult:
    markers = a.snippet.markers
    if not a.status == b.status == "passed" or not markers.record_output:
        return a  # runner:output=none: nothing recorded, nothing to compare
    old, new = ("".join(output_block(a.snippet, r.output, "\n", options,
                                     snippet_figure_links(post, a.snippet, r.output)))
                for r in (a, b))
    drawn = zip(a.output.images(), b.output.images(), strict=False)
    pictures = [f"figure {n}: {why}" for n, (x, y) in enumerate(drawn, 1)
                if (why := images.difference(x, y))]
    tolerance = options.tolerance if markers.tolerance is None else markers.tolerance
    if not pictures and (old == new or compare.blocks_match(
            old.splitlines(), new.splitlines(), tolerance, markers.unordered)):
        return a  # the same, or within the snippet's rules (runner:tolerance, unordered)
    lines = [f"{x!r} then {y!r}" for x, y in zip(old.splitlines(), new.splitlines(),
                                                 strict=False) if x != y]
    message = "output differs between two runs: " + (lines or pictures)[0]
    diff = unified_diff(a.snippet.path, old, new) + "".join(f"{p}\n" for p in pictures)
    return replace(a, status="failed",
                   error=ErrorInfo(ErrorKind.NONDETERMINISTIC, message, a.snippet.line, diff))


def unified_diff(path: str, old: str, new: str) -> str:
    diff = "".join(difflib.unified_diff(old.splitlines(keepends=True),
                                        new.splitlines(keepends=True),
                                        f"{path} (recorded)", f"{path} (fresh run)"))
    if old != new and not diff:  # e.g. only a missing final newline
        return "(the post's text differs from a fresh rendering)\n"
    return diff


