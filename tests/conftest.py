"""Shared fixtures: the project's own configuration and its built environments."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from runner import config, envs
from runner.model import EnvSpec

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session", autouse=True)
def execution_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every run in the tests (and the CLIs they start) caches results in a private folder."""
    folder = tmp_path_factory.mktemp("execution-cache")
    before = os.environ.get("RUNNER_EXECUTION_CACHE")
    os.environ["RUNNER_EXECUTION_CACHE"] = str(folder)
    yield folder
    if before is None:
        del os.environ["RUNNER_EXECUTION_CACHE"]
    else:
        os.environ["RUNNER_EXECUTION_CACHE"] = before


def without_waiting(call: Callable[[], T], fifo: Path, what: str) -> T:
    """`call()`'s result, failing the test if it blocks on the FIFO `fifo` (a read that
    waits for a writer) for 10 s; the blocked reader is then let go."""
    outcome: list[T] = []
    reader = threading.Thread(target=lambda: outcome.append(call()), daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # let the blocked reader go
        pytest.fail(f"{what} waits on a FIFO")
    return outcome[0]


@pytest.fixture
def deep(tmp_path: Path) -> Iterator[Path]:
    """`tmp_path` for a test that makes trees too deep to recurse into: whatever it leaves is
    removed by `rm -rf` (pytest's own clean-up of old temp folders recurses, and a
    RecursionError there would stop every later pytest session on the machine)."""
    yield tmp_path
    subprocess.run(["rm", "-rf", "--one-file-system", str(tmp_path)], check=False)


def deep_tree(top: Path, depth: int, name: str = "d") -> None:
    """`depth` nested folders named `name` under `top` (made through folder fds: the path of
    the deepest may be longer than PATH_MAX), a file in the deepest."""
    top.mkdir(parents=True, exist_ok=True)
    here = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        os.mkdir(name, dir_fd=here)
        below = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=here)
        os.close(here)
        here = below
    os.close(os.open("file", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=here))
    os.close(here)


def run_cli(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """`python -m runner ARGS` as a user types it, in `cwd` (the project by default)."""
    return subprocess.run([sys.executable, "-m", "runner", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=900)


@dataclass(frozen=True)
class Done:
    """What `in_process` ran: its exit status and what it printed."""

    returncode: int
    stdout: str
    stderr: str


def in_process(*args: str | Path, cwd: Path = ROOT) -> Done:
    """`runner.cli.main(ARGS)` in this process, in `cwd`: `run_cli` without the cost of a
    Python start, for commands that start no kernel (sync, notebooks, report)."""
    from runner.cli import main

    out, err, before = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(arg) for arg in args])
    finally:
        os.chdir(before)
    return Done(code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def project() -> config.Config:
    return config.load(ROOT)


@pytest.fixture(scope="session")
def built(project: config.Config):  # type: ignore[no-untyped-def]
    """Build (or find, in the shared cache) a named environment of the project."""
    cache: dict[str, envs.BuiltEnv] = {}

    def get(name: str) -> envs.BuiltEnv:
        if name not in cache:
            cache[name] = envs.build(project.envs[name])
        return cache[name]

    return get


def spec(name: str, *dists: str, pins: tuple[tuple[str, str], ...] = ()) -> EnvSpec:
    """An environment as the planner sees it: a name, its pinned distributions (and versions)."""
    return EnvSpec(name=name, folder=Path("envs") / name, lock_hash="0" * 64,
                   distributions=frozenset(dists), pins=pins)
