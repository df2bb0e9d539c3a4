"""How to run: the options of one run, as the CLI, the pytest plugin or a caller gives them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from runner.config import Config

Mode = Literal["verify", "update"]


@dataclass(frozen=True)
class Options:
    """How to run. The defaults are `python -m runner verify`'s."""

    mode: Mode = "verify"  # update: write the fresh output into posts that are stale
    jobs: int = field(default_factory=lambda: os.cpu_count() or 1)  # sessions at once
    timeout: float | None = None  # seconds per snippet; None: [tool.runner] timeout
    cache: bool = True  # read the execution cache (results are stored either way)
    warm: bool = True  # fork kernels from a warm server per env
    deadline: float | None = None  # seconds for the whole run
    params: tuple[tuple[str, str], ...] = ()  # parameter overrides, (NAME, python literal)
    shard: tuple[int, int] | None = None  # (K, N): run only the K-th of N slices
    durations: Path | None = None  # an earlier run's JSON report: shards balanced by time
    check_determinism: bool = False  # run every session twice; differing output fails
    passenv: tuple[str, ...] = ()  # more variables kernels may see, beyond [tool.runner]'s
    require_sandbox: bool = False  # no sandbox for kernels here: a UsageError, not a warning
    keep_going: bool = False  # a failing snippet does not stop its session
    ignore_stamp: bool = False  # verify: a post whose only difference is its `verified_by`
    # stamp (a re-lock changed a lock hash) passes, reported as `stamp_stale`


def snippet_timeout(config: Config, options: Options) -> float:
    """Seconds per snippet: the run's `--timeout`, else the project's `[tool.runner] timeout`
    (a snippet's `runner:timeout` may lower it, never raise it: `plan.capped`)."""
    return options.timeout or config.timeout


def passenv(config: Config, options: Options) -> tuple[str, ...]:
    """The variables of this process that kernels may see: the project's and the run's."""
    return (*config.passenv, *options.passenv)
