"""The project's sessions: the contract's four (verify-posts, update-posts, notebooks, tests),
unit (the tests that start no kernel), lint and bench. Arguments after `--` go to the runner:
`nox -s verify-posts -- posts/x.md --jobs 2`."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["lint", "tests", "verify-posts"]


@nox.session(name="verify-posts")
def verify_posts(session: nox.Session) -> None:
    """Run every post's snippets; fail on a failing snippet or stale recorded output."""
    session.install("-e", ".")
    session.run("python", "-m", "runner", "verify", *session.posargs)


@nox.session(name="update-posts")
def update_posts(session: nox.Session) -> None:
    """Run every post's snippets and write the verified output into the posts."""
    session.install("-e", ".")
    session.run("python", "-m", "runner", "update", *session.posargs)


@nox.session
def notebooks(session: nox.Session) -> None:
    """Write the posts' snippets as notebooks into snippets/ for authors."""
    session.install("-e", ".")
    session.run("python", "-m", "runner", "notebooks", *session.posargs)


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite, real kernels, TensorFlow and uvicorn included."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def unit(session: nox.Session) -> None:
    """The fast tests: no kernel started, no env built (under a minute)."""
    session.install("-e", ".[test]")
    session.run("pytest", "-m", "not kernel and not slow", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Runner vs plain python vs papermill on generated posts; prints the table and targets."""
    session.install("-e", ".[bench]")
    session.run("python", "benchmarks/bench.py", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff and mypy, both clean."""
    session.install("-e", ".[lint]")
    session.run("ruff", "check", "runner", "tests", "benchmarks", "noxfile.py")
    session.run("mypy")
