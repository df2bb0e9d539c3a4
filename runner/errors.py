"""The runner's own errors: each carries the file and the 1-based line it is about.

`PostError` and its kinds are problems of one post: that post is reported as an error and the
others go on. `UsageError` is a wrong command or a broken project configuration: the run stops
before any post runs. `cli.exit_code` is the one place that turns these into exit codes.
"""

from __future__ import annotations

from pathlib import Path

# The exit codes of the contract: all passed; a snippet failed, a post is stale or unreadable;
# the command itself was wrong.
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class RunnerError(Exception):
    """Base of every error the runner raises on purpose."""

    def __init__(self, message: str, path: Path | str | None = None, line: int | None = None):
        super().__init__(message)
        self.message = message
        self.path = str(path) if path is not None else None
        self.line = line

    def __str__(self) -> str:
        if self.path is None:
            return self.message
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        return f"{where}: {self.message}"


class PostError(RunnerError):
    """A post cannot be used as written: undecodable, bad front matter, bad marker, open fence."""


class PlanError(PostError):
    """A snippet cannot be given an environment (unknown env name, an import no env provides)."""


class UsageError(RunnerError):
    """The command or the project configuration is wrong (exit code 2)."""


class EnvError(RunnerError):
    """An environment could not be built from its lock."""
