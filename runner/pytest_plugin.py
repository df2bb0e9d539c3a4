"""pytest plugin: a post is a test file, each of its Python snippets a test.

Opt-in twice: load it (`-p runner.pytest_plugin`) and ask for posts (`--run-posts`); without the
flag no Markdown file is ever collected. `pytest -p runner.pytest_plugin --run-posts posts/`:

- a post (`.md`, `.markdown`, `.mdx`) under `[tool.runner] posts`, or a post file named on the
  command line, is a `PostFile`; other Markdown (README.md, docs/, test fixtures) is left alone;
- it is parsed and planned as `python -m runner verify` does; a `PostError`/`PlanError` is one
  failing item, `post.md:LINE: message`;
- each snippet is a `SnippetItem` named `line-<fence line>`. The first of a post's items to run
  runs all of the post's sessions (a snippet needs the ones before it: they share a kernel), in
  kernels started like the runner's (limits, network namespace, `passenv`; no execution cache,
  no fork server); each item then reports its own snippet: passed, skipped with the reason, or
  failed with the runner's `post.md:LINE: Type: message` and the kernel's traceback;
- when no snippet failed, the post's recorded output is compared with a fresh rendering (text,
  `verified_by` stamp, figures by pixels, as `verify`); a stale post fails its last item. Nothing
  is ever written.
"""

from __future__ import annotations

import asyncio
import difflib
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from runner import markdown, plan, posts, report
from runner.config import Config, load
from runner.errors import EnvError, PostError, UsageError
from runner.model import ErrorInfo, Output, Post, Session, Snippet, SnippetResult
from runner.writeback import RenderOptions, stamp_value

if TYPE_CHECKING:
    from _pytest._code.code import TerminalRepr

STALE = "recorded output is stale: run `nox -s update-posts`"
_CONFIG = pytest.StashKey[Config]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("runner", "blog posts (runner)")
    group.addoption("--run-posts", action="store_true", default=False,
                    help="collect Markdown posts (.md, .markdown, .mdx) under [tool.runner] "
                         "posts, or named on the command line, and run their Python snippets")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("run_posts"):
        try:
            config.stash[_CONFIG] = load(Path.cwd())
        except UsageError as exc:  # the runner's exit 2: a broken [tool.runner]
            raise pytest.UsageError(f"runner: {exc}") from exc


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> PostFile | None:
    config = parent.config
    if (not config.getoption("run_posts") or file_path.suffix not in posts.SUFFIXES
            or _CONFIG not in config.stash):
        return None
    under_posts = file_path.resolve().is_relative_to(config.stash[_CONFIG].posts.resolve())
    if not (under_posts or parent.session.isinitpath(file_path)):
        return None
    return PostFile.from_parent(parent, path=file_path)


class RunnerFailure(Exception):
    """A snippet that failed, a post that cannot be read or planned, or stale recorded output:
    its repr is the runner's one line; `details` (a traceback, a diff) follows it in reports."""

    def __init__(self, line: str, details: str = "") -> None:
        super().__init__(line)
        self.line = line
        self.details = details

    def __str__(self) -> str:
        return self.line

    def __repr__(self) -> str:
        return self.line

    def report(self) -> str:
        return self.line + (f"\n\n{self.details.rstrip()}" if self.details.strip() else "")


class PostFile(pytest.File):
    """One post. Its sessions run once, when its first item runs; the results stay here."""

    post: Post | None = None
    sessions: tuple[Session, ...] = ()
    _results: dict[int, SnippetResult] | None = None
    _stale: tuple[str] | None = None  # (diff,) once compared, "" inside when fresh

    @property
    def label(self) -> str:
        """The post as the runner names it: relative to the current folder when inside it."""
        try:
            return str(self.path.relative_to(Path.cwd()))
        except ValueError:
            return str(self.path)

    def collect(self) -> Iterator[pytest.Item]:
        config = self.config.stash[_CONFIG]
        try:
            self.post = markdown.parse(self.label, posts.read(Path(self.label)))
            self.sessions = plan.plan(self.post, config.envs, config.import_names)
        except PostError as exc:
            yield PostErrorItem.from_parent(self, name="error", error=exc)
            return
        env_of = {s.line: session.env for session in self.sessions for s in session.snippets}
        for snippet in self.post.snippets:
            yield SnippetItem.from_parent(self, name=f"line-{snippet.line}", snippet=snippet,
                                          env=env_of[snippet.line])

    def results(self) -> dict[int, SnippetResult]:
        """Every snippet's result, by fence line: the post's sessions run on the first call."""
        if self._results is None:
            self._results = {r.snippet.line: r for r in self._run()}
        return self._results

    def _run(self) -> list[SnippetResult]:
        """The post's sessions (one per env), at once, each in its own kernel."""
        from runner import envs
        from runner.execute import kernel_env, run_session
        from runner.warm import ForkServers

        config = self.config.stash[_CONFIG]
        servers = ForkServers()  # only for its kernelspecs: kernels with the runner's limits
        built: dict[str, envs.BuiltEnv | EnvError] = {}
        for name in sorted({session.env for session in self.sessions}):
            try:
                ready = envs.build(config.envs[name], say=_say)
            except EnvError as exc:
                built[name] = exc
            else:
                servers.plain(ready)
                built[name] = ready

        async def one(session: Session) -> Sequence[SnippetResult]:
            env = built[session.env]
            if isinstance(env, EnvError):
                return _all_failed(session, "EnvError", env.message)
            try:
                return await run_session(session, env, config.timeout,
                                         servers.kernels_dir(session.env),
                                         variables=kernel_env(env, config.passenv))
            except Exception as exc:  # run_session turns kernel trouble into results
                return _all_failed(session, type(exc).__name__, str(exc))

        async def run_all() -> list[Sequence[SnippetResult]]:
            return await asyncio.gather(*(one(session) for session in self.sessions))

        try:
            return [result for results in asyncio.run(run_all()) for result in results]
        finally:
            servers.close()

    def stale(self) -> str | None:
        """None when the recorded output is what a fresh run renders, else a diff of the two
        (`verify`'s check: output blocks, the `verified_by` stamp, figures by pixels)."""
        if self._stale is None:
            self._stale = (self._compare(),)
        return self._stale[0] or None

    def _compare(self) -> str:
        assert self.post is not None
        config = self.config.stash[_CONFIG]
        outputs: dict[int, Output] = {line: r.output for line, r in self.results().items()
                                      if r.status == "passed"}
        options = RenderOptions(config.patterns, config.max_output_lines)
        fresh = posts.freshen(Path(self.label), self.post, outputs,
                              stamp_value(self.sessions, config.envs), options)
        if not fresh.differs(self.post.text):
            return ""
        diff = "".join(difflib.unified_diff(
            self.post.text.splitlines(keepends=True), fresh.text.splitlines(keepends=True),
            f"{self.label} (recorded)", f"{self.label} (fresh run)"))
        if fresh.text != self.post.text and not diff:  # e.g. only a missing final newline
            diff = "(the post's text differs from a fresh rendering)\n"
        return diff + fresh.notes()


class SnippetItem(pytest.Item):
    """One snippet: reports its own result from the post's run."""

    def __init__(self, *, snippet: Snippet, env: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.snippet = snippet
        self.env = env

    @property
    def post_file(self) -> PostFile:
        assert isinstance(self.parent, PostFile)
        return self.parent

    def runtest(self) -> None:
        post = self.post_file
        result = post.results()[self.snippet.line]
        if result.status == "failed":
            error = result.error or ErrorInfo("Error", "failed", self.snippet.line)
            line = report.snippet_line(result) or f"{self.snippet.where}: {error.type}"
            raise RunnerFailure(line, error.traceback)
        if (post.post is not None and self.snippet is post.post.snippets[-1]
                and not any(r.status == "failed" for r in post.results().values())):
            diff = post.stale()
            if diff is not None:
                raise RunnerFailure(f"{post.label}: {STALE}", diff)
        if result.status == "skipped":  # reported at the post's line, as skip marks are
            raise pytest.skip.Exception(result.reason or "skipped", _use_item_location=True)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: Any = None) -> str | TerminalRepr:
        if isinstance(excinfo.value, RunnerFailure):
            return excinfo.value.report()
        return super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Path, int, str]:
        return (self.path, self.snippet.line - 1,
                f"{self.post_file.label}:{self.snippet.line} [{self.env}]")


class PostErrorItem(pytest.Item):
    """A post that cannot be read, parsed or planned: one failing item with the runner's line."""

    def __init__(self, *, error: PostError, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.error = error

    def runtest(self) -> None:
        raise RunnerFailure(str(self.error))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: Any = None) -> str | TerminalRepr:
        if isinstance(excinfo.value, RunnerFailure):
            return excinfo.value.report()
        return super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        line = self.error.line
        return self.path, None if line is None else line - 1, str(self.error)


def _all_failed(session: Session, kind: str, message: str) -> list[SnippetResult]:
    return [SnippetResult(s, session.env, "failed", error=ErrorInfo(kind, message, s.line))
            for s in session.snippets]


def _say(text: str) -> None:
    print(f"runner: {text}", file=sys.stderr, flush=True)
