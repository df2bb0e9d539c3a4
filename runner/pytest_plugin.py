"""pytest plugin: a post is a test file, each of its Python snippets a test.

Opt-in twice: load it (`-p runner.pytest_plugin`) and ask for posts (`--run-posts`); without the
flag no Markdown file is ever collected. `pytest -p runner.pytest_plugin --run-posts posts/`:

- a post (`.md`, `.markdown`, `.mdx`) under `[tool.runner] posts`, or a post file named on the
  command line, is a `PostFile`; other Markdown (README.md, docs/, test fixtures) is left alone;
- it is parsed and planned as `python -m runner verify` does; a `PostError`/`PlanError` is one
  failing item, `post.md:LINE: message`;
- each snippet is a `SnippetItem` named `line-<fence line>`. The first item to run runs every
  selected post with `runner.run_posts` in verify mode, the function behind the CLI, so the
  execution cache, warm kernels, `--runner-param`, `--runner-jobs` and clean-up on a signal are
  the CLI's; each item then reports its own snippet: passed, skipped with the reason, or failed
  with the runner's `post.md:LINE: Type: message` and the kernel's traceback;
- a stale post (its recorded output, stamp or figures differ from the fresh run) fails its last
  item with the diff. Nothing is ever written.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from runner import markdown, plan, posts, report
from runner.config import Config, load
from runner.errors import PostError, UsageError
from runner.markdown import POST_SUFFIXES
from runner.model import ErrorInfo, Snippet
from runner.report import STALE, PostOutcome, Run
from runner.visible import visible

if TYPE_CHECKING:
    from _pytest._code.code import TerminalRepr

_CONFIG = pytest.StashKey[Config]()
_RUN = pytest.StashKey[dict[str, PostOutcome]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("runner", "blog posts (runner)")
    group.addoption("--run-posts", action="store_true", default=False,
                    help="collect Markdown posts (.md, .markdown, .mdx) under [tool.runner] "
                         "posts, or named on the command line, and run their Python snippets")
    group.addoption("--runner-jobs", type=int, default=None, metavar="N",
                    help="sessions run at once (default: the number of cores)")
    group.addoption("--runner-param", action="append", default=[], metavar="NAME=VALUE",
                    help="override a parameter a post declares, as `runner verify --param`")
    group.addoption("--runner-no-cache", action="store_true", default=False,
                    help="run every session; do not read the execution cache")
    group.addoption("--runner-report", metavar="FILE", default=None,
                    help="write the run's JSON report here, as `runner verify --report`")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("run_posts"):
        try:
            config.stash[_CONFIG] = load(Path.cwd())
        except UsageError as exc:  # the runner's exit 2: a broken [tool.runner]
            raise pytest.UsageError(f"runner: {exc}") from exc


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> PostFile | None:
    config = parent.config
    if (not config.getoption("run_posts") or file_path.suffix not in POST_SUFFIXES
            or _CONFIG not in config.stash):
        return None
    under_posts = file_path.resolve().is_relative_to(config.stash[_CONFIG].posts.resolve())
    if not (under_posts or parent.session.isinitpath(file_path)):
        return None
    return PostFile.from_parent(parent, path=file_path)


def outcomes(session: pytest.Session) -> dict[str, PostOutcome]:
    """Every selected post's outcome, by its label: the run happens on the first call."""
    config = session.config
    if _RUN not in config.stash:
        from runner import parameters
        from runner.run import Options, run_posts

        labels = list(dict.fromkeys(item.parent.label for item in session.items
                                    if isinstance(item.parent, PostFile)))
        options = Options(
            cache=not config.getoption("runner_no_cache"),
            params=tuple(parameters.parse_overrides(config.getoption("runner_param")).items()),
            **({"jobs": config.getoption("runner_jobs")} if config.getoption("runner_jobs")
               else {}))
        run = run_posts(labels, config.stash[_CONFIG], options) if labels else Run(())
        if config.getoption("runner_report"):
            report.write_json(run, Path(config.getoption("runner_report")))
        config.stash[_RUN] = {outcome.path: outcome for outcome in run.posts}
    return config.stash[_RUN]


class RunnerFailure(Exception):
    """A snippet that failed, a post that cannot be read or planned, or stale recorded output:
    its repr is the runner's one line; `details` (a traceback, a diff) follows it in reports.
    Both as they are: no control character from a post or a kernel reaches the terminal."""

    def __init__(self, line: str, details: str = "") -> None:
        super().__init__(line)
        self.line = report.one_line(line)
        self.details = visible(details)

    def __str__(self) -> str:
        return self.line

    def __repr__(self) -> str:
        return self.line

    def report(self) -> str:
        return self.line + (f"\n\n{self.details.rstrip()}" if self.details.strip() else "")


class PostFile(pytest.File):
    """One post: an item per snippet, or one for the error that keeps it from being planned."""

    @property
    def label(self) -> str:
        """The post as the runner names it: relative to the current folder when inside it."""
        return str(posts.relative(self.path))

    def collect(self) -> Iterator[pytest.Item]:
        config = self.config.stash[_CONFIG]
        try:
            post = markdown.parse(self.label, posts.read(Path(self.label)))
            sessions = plan.plan(post, config.envs, config.import_names)
        except PostError as exc:
            yield PostErrorItem.from_parent(self, name="error", error=exc)
            return
        env_of = {s.line: session.env for session in sessions for s in session.snippets}
        for snippet in post.snippets:
            yield SnippetItem.from_parent(self, name=f"line-{snippet.line}", snippet=snippet,
                                          env=env_of[snippet.line],
                                          last=snippet is post.snippets[-1])

    def outcome(self) -> PostOutcome:
        return outcomes(self.session)[self.label]


class SnippetItem(pytest.Item):
    """One snippet: reports its own result from the post's run."""

    def __init__(self, *, snippet: Snippet, env: str, last: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.snippet = snippet
        self.env = env
        self.last = last  # the post's last snippet: it reports a stale post

    @property
    def post_file(self) -> PostFile:
        assert isinstance(self.parent, PostFile)
        return self.parent

    def runtest(self) -> None:
        outcome = self.post_file.outcome()
        if outcome.status == "error":  # e.g. changed on disk between collection and the run
            raise RunnerFailure(report.post_line(outcome))
        [result] = [r for r in outcome.snippets if r.snippet.line == self.snippet.line]
        if result.status == "failed":
            error = result.error or ErrorInfo("Error", "failed", self.snippet.line)
            line = report.snippet_line(result) or f"{self.snippet.where}: {error.type}"
            raise RunnerFailure(line, error.traceback)
        if self.last and outcome.status == "stale":
            raise RunnerFailure(f"{outcome.path}: {STALE}", outcome.diff)
        if result.status == "skipped":  # reported at the post's line, as skip marks are
            raise pytest.skip.Exception(result.reason or "skipped", _use_item_location=True)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: Any = None) -> str | TerminalRepr:
        if isinstance(excinfo.value, RunnerFailure):
            return excinfo.value.report()
        return super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Path, int, str]:
        return (self.path, self.snippet.line - 1,
                visible(f"{self.post_file.label}:{self.snippet.line} [{self.env}]"))


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
        return self.path, None if line is None else line - 1, report.one_line(str(self.error))
