"""The project's sessions: the contract's four (verify-posts, update-posts, notebooks, tests),
unit (the tests that start no kernel), lint and bench. Arguments after `--` go to the runner:
`nox -s verify-posts -- posts/x.md --jobs 2`.

Each session keeps its venv (.nox/NAME) from run to run and installs the project into it only
when pyproject.toml or what the session installs changed: the project is installed editable, so
an edit to runner/ needs no install. `nox --reuse-venv=never` (or deleting .nox/) starts afresh;
`nox -R` reuses and installs nothing at all."""

from __future__ import annotations

import hashlib
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_venv = "yes"
nox.options.sessions = ["lint", "tests", "verify-posts"]

PYPROJECT = Path(__file__).parent / "pyproject.toml"


def install(session: nox.Session, target: str) -> None:
    """`pip install -e TARGET` into the session's venv, unless this venv already has it as
    pyproject.toml now says (a stamp in the venv records what was installed)."""
    wanted = hashlib.sha256(PYPROJECT.read_bytes() + target.encode()).hexdigest()
    stamp = Path(session.virtualenv.location) / ".runner-installed"
    if stamp.is_file() and stamp.read_text() == wanted:
        return
    session.install("-e", target)
    stamp.write_text(wanted)


@nox.session(name="verify-posts")
def verify_posts(session: nox.Session) -> None:
    """Run every post's snippets; fail on a failing snippet or stale recorded output."""
    install(session, ".")
    session.run("python", "-m", "runner", "verify", *session.posargs)


@nox.session(name="update-posts")
def update_posts(session: nox.Session) -> None:
    """Run every post's snippets and write the verified output into the posts."""
    install(session, ".")
    session.run("python", "-m", "runner", "update", *session.posargs)


@nox.session
def notebooks(session: nox.Session) -> None:
    """Write the posts' snippets as notebooks into snippets/ for authors."""
    install(session, ".")
    session.run("python", "-m", "runner", "notebooks", *session.posargs)


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite, real kernels, TensorFlow and uvicorn included."""
    install(session, ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def unit(session: nox.Session) -> None:
    """The fast tests: no kernel started, no env built (under a minute)."""
    install(session, ".[test]")
    session.run("pytest", "-m", "not kernel and not slow", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Runner vs plain python vs papermill on generated posts, and at blog scale (50, 200,
    1000 posts); prints the tables and the targets met or missed. `-- --quick`: small sizes."""
    install(session, ".[bench]")
    session.run("python", "benchmarks/bench.py", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff and mypy, both clean."""
    install(session, ".[lint]")
    session.run("ruff", "check", "runner", "tests", "benchmarks", "tools", "noxfile.py")
    session.run("mypy")
