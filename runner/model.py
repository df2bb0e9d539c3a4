"""The data that flows between the stages: plain frozen dataclasses, standard library only.

Markdown text -> `Post` and its `Snippet`s -> `Session`s (a post's snippets grouped by
environment) -> `SnippetResult`s -> output blocks spliced back -> report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

Status = Literal["passed", "failed", "skipped"]


class ErrorKind(StrEnum):
    """The runner's own kinds of snippet failure (a snippet's own exception keeps its Python
    name, `NameError`); the strings are those of the JSON report."""

    KERNEL = "KernelError"  # the kernel would not start, or died between cells
    DEAD_KERNEL = "DeadKernelError"  # the kernel died while running the snippet
    TIMEOUT = "TimeoutError"  # the snippet ran past its timeout
    DEADLINE = "DeadlineError"  # the run's --deadline came first
    DID_NOT_RAISE = "DidNotRaise"  # runner:raises=X, and nothing was raised
    ENV = "EnvError"  # its environment could not be built
    NONDETERMINISTIC = "Nondeterministic"  # --check-determinism: two runs printed different text
    OUTPUT_LOST = "OutputLost"  # output still arriving long after the snippet ended, or a
    # message from the kernel refused (over the size the runner takes)
    ABORTED = "Aborted"  # the kernel's reply: it did not run the snippet (nor say why)


@dataclass(frozen=True)
class Markers:
    """What the author asked for in a fence's info string (`runner:skip`, `runner:env=X`, ...)."""

    skip: str | None = None  # the reason; "" when none was given
    raises: str | None = None  # the exception type name the snippet is expected to raise
    env: str | None = None
    timeout: float | None = None
    parameters: bool = False  # the post's parameters (papermill's "parameters" cell)
    tolerance: float | None = None  # relative, for numbers in its text output; None: project's
    unordered: bool = False  # its output lines compared as a multiset
    record_output: bool = True  # runner:output=none: it runs, but no output block is kept
    variables: tuple[tuple[str, str], ...] = ()  # runner:env-var=NAME=VALUE, each as written:
    # its session's kernel starts with them in its environment


@dataclass(frozen=True)
class Region:
    """A span of post lines, 0-based, end-exclusive (like markdown-it's `token.map`)."""

    start: int
    end: int


@dataclass(frozen=True)
class Snippet:
    """One Python code block of a post."""

    path: str  # the post, as given on the command line
    line: int  # 1-based line of the opening fence
    code: str  # the code, container prefixes removed, "\n" line endings
    markers: Markers
    hidden: bool = False  # inside a `<!-- runner:hidden` comment: runs, never rendered
    anchor: int = 0  # 0-based line index where this snippet's output block goes
    prefix: str = ""  # what starts each line of the container (list indent, "> ")
    output: Region | None = None  # the runner-owned output block already in the post
    start: int = 0  # 0-based first line of its source (the fence, or its hidden block's opener)

    @property
    def code_line(self) -> int:
        """1-based post line of the first line of code."""
        return self.line + 1

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass(frozen=True)
class Post:
    path: str
    text: str
    snippets: tuple[Snippet, ...]
    front_matter: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    default_env: str | None = None
    network: bool = False  # the post's snippets may reach the network (front matter opt-in)
    keep_going: bool = False  # a failing snippet does not stop its session (front matter)


@dataclass(frozen=True)
class EnvSpec:
    """One pinned environment: envs/NAME/requirements.in and the lock compiled from it."""

    name: str
    folder: Path
    lock_hash: str  # sha256 of the lock and the Python version it is built for
    distributions: frozenset[str]  # normalized names of every pinned distribution
    kernel_env: tuple[tuple[str, str], ...] = ()  # variables set in the env's kernel
    preload: tuple[str, ...] = ()  # modules its warm kernels import once per run
    memory_mb: int = 0  # per-kernel limits (0: none)
    processes: int = 0
    pins: tuple[tuple[str, str], ...] = ()  # (normalized distribution, version) from the lock
    network: bool = False  # [tool.runner.env.NAME] allow-network: its posts may ask for it

    @property
    def lock(self) -> Path:
        return self.folder / "requirements.lock"


@dataclass(frozen=True)
class Session:
    """The snippets of one post that run in one environment, in post order, in one kernel."""

    post: str
    env: str
    snippets: tuple[Snippet, ...]
    network: bool = False
    overrides: tuple[tuple[str, str], ...] = ()  # parameter values given for this run
    keep_going: bool = False  # a failing snippet does not stop the session (--keep-going)
    # Snippets the planner already knows will fail (an import no env provides, an install line
    # the env's lock does not satisfy): (fence line, error type, message, post line).
    failures: tuple[tuple[int, str, str, int], ...] = ()
    split: str = ""  # why the post's snippets run in more than one env ("" when they do not)

    @property
    def variables(self) -> dict[str, str]:
        """What the kernel's environment gets from its snippets' `runner:env-var` markers
        (those of snippets that run; a name given again: the later value)."""
        return {name: value for s in self.snippets if s.markers.skip is None
                for name, value in s.markers.variables}


@dataclass(frozen=True)
class ErrorInfo:
    type: str  # an ErrorKind, or the name of the exception the snippet raised
    message: str
    post_line: int | None
    traceback: str = ""


@dataclass(frozen=True)
class Part:
    """One piece of a snippet's output, in the order the kernel sent it."""

    kind: Literal["text", "table", "image"]
    text: str = ""  # the plain-text form (every kind has one)
    html: str = ""  # a table's HTML (a pandas DataFrame)
    png: bytes = b""  # an image's PNG bytes (a matplotlib figure)


@dataclass(frozen=True)
class Output:
    """What a snippet printed: stdout and plain-text results in order, and stderr apart.

    `parts` keeps tables and figures in order among the text; without them, `stdout` is
    the one part."""

    stdout: str = ""
    stderr: str = ""
    parts: tuple[Part, ...] = ()

    def all_parts(self) -> tuple[Part, ...]:
        if self.parts:
            return self.parts
        return (Part("text", self.stdout),) if self.stdout else ()

    def images(self) -> list[bytes]:
        """The PNG bytes of its figures, in order."""
        return [p.png for p in self.parts if p.kind == "image"]


@dataclass(frozen=True)
class SnippetResult:
    snippet: Snippet
    env: str
    status: Status
    output: Output = Output()
    error: ErrorInfo | None = None
    reason: str | None = None  # why it was skipped
    duration_s: float = 0.0
    cached: bool = False  # taken from the execution cache, not run
    not_run_after: int | None = None  # skipped because the snippet at this line failed

    @classmethod
    def not_run(cls, snippet: Snippet, env: str, failed_line: int) -> SnippetResult:
        """A snippet after a failure in its session: not run (the report calls it skipped)."""
        return cls(snippet, env, "skipped", reason=f"not run: the snippet at line {failed_line} "
                   "failed", not_run_after=failed_line)

    @classmethod
    def failed(cls, snippet: Snippet, env: str, kind: str, message: str,
               post_line: int | None = None, traceback: str = "", output: Output | None = None,
               duration_s: float = 0.0) -> SnippetResult:
        return cls(snippet, env, "failed", output or Output(),
                   ErrorInfo(kind, message, post_line, traceback), duration_s=duration_s)

    @property
    def skipped_on_purpose(self) -> bool:
        """Skipped because the author marked it `runner:skip`, not because of a failure."""
        return self.status == "skipped" and self.not_run_after is None
